"""Hypothesis properties of the protocol core: chunking, round trips, garbage, budget.

Garbage from the peer may raise ``RemoteProtocolError`` and nothing else."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serfbridge.errors import RemoteProtocolError
from serfbridge.rpc.budget import encoded_tags_size
from serfbridge.rpc.protocol import Connection, StreamRecord
from tests.lab.fake_core_agent import decode_requests, encode_reply

names = st.text(min_size=0, max_size=40)
tag_maps = st.dictionaries(st.text(max_size=40), st.text(max_size=300), max_size=8)
members = st.fixed_dictionaries(
    {
        "Name": names,
        "Addr": st.sampled_from([b"\x7f\x00\x00\x01", b"\x0a\x8b\x28\x32", b"\x00" * 15 + b"\x01"]),
        "Port": st.integers(0, 65535),
        "Tags": tag_maps,
        "Status": st.sampled_from(["alive", "leaving", "left", "failed"]),
        "ProtocolMin": st.integers(0, 255),
        "ProtocolMax": st.integers(0, 255),
        "ProtocolCur": st.integers(0, 255),
        "DelegateMin": st.integers(0, 255),
        "DelegateMax": st.integers(0, 255),
        "DelegateCur": st.integers(0, 255),
    }
)
user_events = st.fixed_dictionaries(
    {
        "Event": st.just("user"),
        "Name": names,
        "Payload": st.binary(max_size=100) | st.none(),
        "LTime": st.integers(0, 2**63),
        "Coalesce": st.booleans(),
    }
)
member_events = st.fixed_dictionaries(
    {
        "Event": st.sampled_from(
            ["member-join", "member-leave", "member-failed", "member-update", "member-reap"]
        ),
        "Members": st.lists(members, max_size=4),
    }
)


def _ready() -> tuple[Connection, int, int]:
    conn = Connection()
    conn.receive_data(encode_reply(0))
    stream = conn.send("stream", {"Type": "*"})
    members_seq = conn.send("members")
    conn.receive_data(encode_reply(stream))
    conn.next_events()
    return conn, stream, members_seq


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@settings(max_examples=150, deadline=None)
@given(
    records=st.lists(user_events | member_events, min_size=1, max_size=6),
    member_list=st.lists(members, max_size=5),
    cuts=st.lists(st.integers(0, 10**6)),
)
def test_any_split_of_the_byte_stream_gives_the_same_events(records, member_list, cuts) -> None:
    conn, stream, members_seq = _ready()
    wire = b"".join(encode_reply(stream) + msgpack.packb(r, use_bin_type=True) for r in records)
    wire += encode_reply(members_seq) + msgpack.packb({"Members": member_list}, use_bin_type=True)
    whole = Connection()
    whole.receive_data(encode_reply(0))
    whole.send("stream", {"Type": "*"})
    whole.send("members")
    whole.receive_data(encode_reply(stream))
    whole.next_events()
    whole.receive_data(wire)
    expected = whole.next_events()
    got = []
    for chunk in _split(wire, cuts):
        conn.receive_data(chunk)
        got.extend(conn.next_events())
    assert got == expected
    assert sum(isinstance(e, StreamRecord) for e in got) == len(records)


@settings(max_examples=100, deadline=None)
@given(record=user_events)
def test_user_event_round_trips(record) -> None:
    conn, stream, _ = _ready()
    conn.receive_data(encode_reply(stream) + msgpack.packb(record, use_bin_type=True))
    [event] = conn.next_events()
    assert isinstance(event, StreamRecord)
    item = event.item
    assert (item.name, item.payload, item.ltime, item.coalesce) == (  # type: ignore[union-attr]
        record["Name"],
        record["Payload"] or b"",
        record["LTime"],
        record["Coalesce"],
    )


@settings(max_examples=100, deadline=None)
@given(
    command=st.sampled_from(["event", "tags", "join", "stream", "respond"]),
    body=st.dictionaries(
        st.sampled_from(["Name", "Tags", "Existing", "Type", "ID"]),
        st.text(max_size=20) | st.integers(0, 2**32),
        max_size=4,
    ),
)
def test_requests_round_trip(command, body) -> None:
    conn = Connection()
    conn.data_to_send()
    conn.receive_data(encode_reply(0))
    seq = conn.send(command, body)
    assert decode_requests(conn.data_to_send()) == [{"Command": command, "Seq": seq}, body]


@settings(max_examples=400, deadline=None)
@given(
    garbage=st.binary(max_size=400),
    cuts=st.lists(st.integers(0, 500), max_size=5),
    state=st.sampled_from(["handshaking", "ready", "streaming"]),
)
def test_garbage_only_ever_raises_remote_protocol_error(garbage, cuts, state) -> None:
    if state == "handshaking":
        conn = Connection()
    else:
        conn, _, _ = _ready() if state == "streaming" else (Connection(), 0, 0)
        if state == "ready":
            conn.receive_data(encode_reply(0))
            conn.send("members")
    try:
        for chunk in _split(garbage, cuts):
            conn.receive_data(chunk)
            conn.next_events()
    except RemoteProtocolError:
        pass  # the only error the peer's bytes may cause (anything else fails the test)


@settings(max_examples=200, deadline=None)
@given(
    structured=st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(2**63), 2**64 - 1)
        | st.text(max_size=10)
        | st.binary(max_size=10),
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
        ),
        max_leaves=10,
    )
)
def test_well_formed_msgpack_of_the_wrong_shape_only_raises_remote_protocol_error(
    structured,
) -> None:
    conn, stream, members_seq = _ready()
    try:
        conn.receive_data(encode_reply(stream) + msgpack.packb(structured, use_bin_type=True))
        conn.receive_data(encode_reply(members_seq) + msgpack.packb(structured, use_bin_type=True))
        conn.receive_data(msgpack.packb(structured, use_bin_type=True))
    except RemoteProtocolError:
        pass  # the only error the peer's bytes may cause (anything else fails the test)


def _str_header(n: int) -> int:
    """Bytes of an old-spec msgpack raw header for n bytes (fixraw < 32, raw16, raw32)."""
    return 1 if n < 32 else 3 if n < 2**16 else 5


@given(tags=st.dictionaries(st.text(max_size=40), st.text(max_size=300), max_size=15))
def test_budget_matches_sizes_counted_from_the_msgpack_spec(tags) -> None:
    # Counted by hand, not by msgpack: 1 magic byte, a fixmap header (<= 15 entries), and
    # per string an old-spec header (never str8, §8) plus its UTF-8 bytes.
    expected = 1 + 1
    for text in (*tags, *tags.values()):
        size = len(text.encode("utf-8", "surrogateescape"))
        expected += _str_header(size) + size
    assert encoded_tags_size(tags) == expected


@pytest.mark.parametrize(
    ("tags", "size"),
    [
        pytest.param({}, 2, id="empty: magic + 0x80"),
        pytest.param({"role": "db"}, 10, id="fixraw: 1+1 + (1+4) + (1+2)"),
        pytest.param({"k": "v" * 31}, 36, id="31 bytes still fixraw"),
        pytest.param({"k": "v" * 32}, 39, id="32 bytes take raw16 (da 00 20), not str8"),
        pytest.param({"k": "é" * 16}, 39, id="16 two-byte chars are 32 bytes"),
        pytest.param({"k": "v" * 65536}, 2 + 2 + 5 + 65536, id="raw32 past 65535"),
        # The edge the live agent accepts in test_rpc_client (512 taken, 513 refused).
        pytest.param({"role": "db", "big": "x" * 495}, 512, id="agent-edge-accepted"),
        pytest.param({"role": "db", "big": "x" * 496}, 513, id="agent-edge-refused"),
    ],
)
def test_budget_of_known_tag_sets(tags: dict[str, str], size: int) -> None:
    assert encoded_tags_size(tags) == size
