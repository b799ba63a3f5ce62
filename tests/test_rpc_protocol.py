"""Unit tests of the pure protocol core, driven with the agent's own bytes (serf-probe.md)."""

from __future__ import annotations

import msgpack
import pytest

from serfbridge.errors import (
    AuthError,
    HandshakeError,
    InvalidFilter,
    KeyringError,
    ProtocolError,
    QueryError,
    TagsTooLarge,
    UnsupportedCommand,
)
from serfbridge.rpc.models import LogLine, MemberEvent, QueryRecord, UserEvent
from serfbridge.rpc.protocol import (
    Connection,
    Ready,
    Reply,
    State,
    StreamEnded,
    StreamRecord,
    agent_error,
)
from tests.lab.fake_core_agent import decode_requests, encode_reply

# Captured from the live 0.9.4 agent (serf-probe.md §2 and §3).
MEMBERS_BODY_HEX = (
    "81a74d656d62657273938ba441646472c4047f000001ab44656c656761746543757205ab44656c6567617465"
    "4d617805ab44656c65676174654d696e02a44e616d65a26e31a4506f7274cd1f0aab50726f746f636f6c4375"
    "7202ab50726f746f636f6c4d617805ab50726f746f636f6c4d696e01a6537461747573a5616c697665a45461"
    "677382a4726f6c65a3776562a764632d6e616d65a4656173748ba441646472c4047f000001ab44656c656761"
    "746543757205ab44656c65676174654d617805ab44656c65676174654d696e02a44e616d65a26e32a4506f72"
    "74cd1f0bab50726f746f636f6c43757202ab50726f746f636f6c4d617805ab50726f746f636f6c4d696e01a6"
    "537461747573a5616c697665a45461677381a4726f6c65a264628ba441646472c4047f000001ab44656c6567"
    "61746543757205ab44656c65676174654d617805ab44656c65676174654d696e02a44e616d65a26e33a4506f"
    "7274cd1f0cab50726f746f636f6c43757202ab50726f746f636f6c4d617805ab50726f746f636f6c4d696e01"
    "a6537461747573a5616c697665a45461677380"
)
USER_EVENT_HEX = (
    "85a8436f616c65736365c2a54576656e74a475736572a54c54696d6507a44e616d65a66465706c6f79a75061"
    "796c6f6164c40676312e322e33"
)


def ready(auth_key: str | None = None) -> Connection:
    """A connection that has finished handshake (and auth)."""
    conn = Connection(auth_key=auth_key)
    conn.data_to_send()
    conn.receive_data(encode_reply(0))
    if auth_key is not None:
        conn.receive_data(encode_reply(1))
    conn.next_events()
    conn.data_to_send()
    return conn


def test_handshake_is_first_and_matches_the_probe_bytes() -> None:
    conn = Connection()
    assert conn.data_to_send().hex() == (
        "82a7436f6d6d616e64a968616e647368616b65a35365710081a756657273696f6e01"
    )


def test_requests_are_held_until_handshake_succeeds() -> None:
    conn = Connection()
    conn.data_to_send()
    seq = conn.send("members")
    assert conn.data_to_send() == b""
    conn.receive_data(encode_reply(0))
    assert conn.next_events() == [Reply(0, "handshake", ""), Ready()]
    assert decode_requests(conn.data_to_send()) == [{"Command": "members", "Seq": seq}]


def test_auth_goes_out_only_after_the_handshake_reply_and_gates_requests() -> None:
    conn = Connection(auth_key="s3cret")
    assert len(decode_requests(conn.data_to_send())) == 2  # handshake header + body only
    stats = conn.send("stats")
    conn.receive_data(encode_reply(0))
    assert conn.state is State.AUTHENTICATING
    [header, body] = decode_requests(conn.data_to_send())
    assert header == {"Command": "auth", "Seq": stats + 1} and body == {"AuthKey": "s3cret"}
    conn.receive_data(encode_reply(stats + 1))
    assert conn.state is State.READY
    assert decode_requests(conn.data_to_send()) == [{"Command": "stats", "Seq": stats}]


def test_wrong_auth_fails_the_connection_and_drops_held_requests() -> None:
    conn = Connection(auth_key="bad")
    members = conn.send("members")
    conn.receive_data(encode_reply(0))
    conn.data_to_send()
    conn.next_events()
    conn.receive_data(encode_reply(members + 1, "Invalid authentication token"))
    events = conn.next_events()
    assert events == [Reply(members + 1, "auth", "Invalid authentication token")]
    assert conn.state is State.FAILED
    assert conn.data_to_send() == b""
    with pytest.raises(AuthError, match="authentication failed"):
        events[0].raise_for_error()


def test_members_reply_body_is_parsed() -> None:
    conn = ready()
    seq = conn.send("members")
    conn.receive_data(encode_reply(seq) + bytes.fromhex(MEMBERS_BODY_HEX))
    [reply] = conn.next_events()
    assert isinstance(reply, Reply) and reply.error == ""
    assert isinstance(reply.body, tuple)
    assert [(m.name, m.addr, m.port, dict(m.tags)) for m in reply.body] == [
        ("n1", "127.0.0.1", 7946, {"role": "web", "dc-name": "east"}),
        ("n2", "127.0.0.1", 7947, {"role": "db"}),
        ("n3", "127.0.0.1", 7948, {}),
    ]


def test_stream_ack_then_records_then_stop_then_drain() -> None:
    conn = ready()
    seq = conn.send("stream", {"Type": "*"})
    conn.receive_data(encode_reply(seq))
    assert conn.next_events() == [Reply(seq, "stream", "")]
    record = encode_reply(seq) + bytes.fromhex(USER_EVENT_HEX)
    conn.receive_data(record)
    [ev] = conn.next_events()
    assert isinstance(ev, StreamRecord) and ev.item == UserEvent("deploy", b"v1.2.3", 7, False)
    stop = conn.send("stop", {"Stop": seq})
    conn.receive_data(encode_reply(stop) + record + record)  # buffered records after stop
    assert conn.next_events() == [Reply(stop, "stop", "")]
    assert not conn.is_stream(seq)


def test_records_of_a_stream_interleave_with_other_replies() -> None:
    conn = ready()
    seq = conn.send("stream", {"Type": "member-join"})
    conn.receive_data(encode_reply(seq))
    conn.next_events()
    stats = conn.send("stats")
    member_event = {"Event": "member-join", "Members": []}
    conn.receive_data(
        encode_reply(seq)
        + msgpack.packb(member_event)
        + encode_reply(stats)
        + msgpack.packb({"agent": {"name": "n1"}})
    )
    events = conn.next_events()
    assert isinstance(events[0], StreamRecord)
    assert events[0].item == MemberEvent("member-join", ())
    assert events[1] == Reply(stats, "stats", "", {"agent": {"name": "n1"}})


def test_query_records_end_with_done() -> None:
    conn = ready()
    seq = conn.send("query", {"Name": "q", "Payload": b""})
    conn.receive_data(encode_reply(seq))
    for rec in (
        {"Type": "ack", "From": "n1", "Payload": None},
        {"Type": "response", "From": "n1", "Payload": b"ok"},
        {"Type": "done", "From": "", "Payload": None},
    ):
        conn.receive_data(encode_reply(seq) + msgpack.packb(rec, use_bin_type=True))
    events = conn.next_events()
    assert [e.item for e in events if isinstance(e, StreamRecord)] == [
        QueryRecord("ack", "n1", b""),
        QueryRecord("response", "n1", b"ok"),
        QueryRecord("done", "", b""),
    ]
    assert events[-1] == StreamEnded(seq)


def test_monitor_records() -> None:
    conn = ready()
    seq = conn.send("monitor", {"LogLevel": "INFO"})
    conn.receive_data(encode_reply(seq) + encode_reply(seq) + msgpack.packb({"Log": "hello"}))
    assert conn.next_events()[1] == StreamRecord(seq, LogLine("hello"))


def test_body_commands_keep_their_body_on_error() -> None:
    conn = ready()
    seq = conn.send("join", {"Existing": ["127.0.0.1:1"], "Replay": False})
    conn.receive_data(encode_reply(seq, "1 error occurred") + msgpack.packb({"Num": 0}))
    assert conn.next_events() == [Reply(seq, "join", "1 error occurred", 0)]


def test_authentication_required_echo_is_swallowed() -> None:
    # The refused request's body is re-read as a header and answered again (§1.1).
    conn = ready()
    seq = conn.send("tags", {"Tags": {"a": "1"}, "DeleteTags": []})
    conn.receive_data(encode_reply(seq, "Authentication required") * 2)
    assert conn.next_events() == [Reply(seq, "tags", "Authentication required")]
    nxt = conn.send("members")
    conn.receive_data(encode_reply(nxt, "Authentication required"))
    assert conn.next_events() == [Reply(nxt, "members", "Authentication required")]


def test_seq_strictly_increases_and_is_never_reused() -> None:
    conn = ready()
    seqs = [conn.send("stats") for _ in range(5)]
    assert seqs == sorted(set(seqs)) and seqs[0] >= 1


def test_reply_for_unknown_seq_is_a_protocol_error() -> None:
    conn = ready()
    with pytest.raises(ProtocolError):
        conn.receive_data(encode_reply(99))
    assert conn.state is State.FAILED
    with pytest.raises(ProtocolError):
        conn.send("members")


@pytest.mark.parametrize(
    ("command", "body"),
    [
        pytest.param("members", {"x": 1}, id="members-takes-no-body"),
        pytest.param("tags", None, id="tags-needs-a-body"),
        pytest.param("handshake", {"Version": 1}, id="handshake-is-internal"),
        pytest.param("frobnicate", None, id="unknown-command"),
    ],
)
def test_malformed_requests_are_refused_locally(command: str, body: dict[str, int] | None) -> None:
    with pytest.raises(ProtocolError):
        ready().send(command, body)


@pytest.mark.parametrize(
    ("command", "text", "kind"),
    [
        pytest.param("members", "Authentication required", AuthError, id="auth-required"),
        pytest.param("auth", "Invalid authentication token", AuthError, id="bad-token"),
        pytest.param("handshake", "Unsupported IPC version", HandshakeError, id="ipc-version"),
        pytest.param("x", "Unsupported command", UnsupportedCommand, id="unsupported"),
        pytest.param("stream", "Invalid event filter", InvalidFilter, id="bad-filter"),
        pytest.param(
            "tags",
            "Encoded length of tags exceeds limit of 512 bytes",
            TagsTooLarge,
            id="tags-too-large",
        ),
        pytest.param("respond", "No pending queries matching ID", QueryError, id="respond"),
        pytest.param("list-keys", "3/3 nodes reported failure", KeyringError, id="keys"),
    ],
)
def test_agent_errors_become_typed_exceptions(command: str, text: str, kind: type) -> None:
    err = agent_error(command, text)
    assert isinstance(err, kind)
    assert err.agent_text == text


def test_handshake_refused_fails_connection() -> None:
    conn = Connection()
    conn.receive_data(encode_reply(0, "Unsupported IPC version"))
    assert conn.state is State.FAILED


def test_ipv6_member_address() -> None:
    conn = ready()
    seq = conn.send("members")
    member = {
        "Name": "n5",
        "Addr": b"\x00" * 15 + b"\x01",
        "Port": 7950,
        "Tags": {},
        "Status": "alive",
    }
    conn.receive_data(encode_reply(seq) + msgpack.packb({"Members": [member]}, use_bin_type=True))
    [reply] = conn.next_events()
    assert isinstance(reply.body, tuple) and reply.body[0].addr == "::1"


# --- size limits: what a fake agent on the port may send (issue 13, point 6) ---------------

from serfbridge.rpc import protocol  # noqa: E402


def _member(i: int, tags: dict[str, str] | None = None) -> dict[str, object]:
    return {
        "Name": f"m{i}", "Addr": b"\x0a\x00\x00\x01", "Port": 7946,
        "Tags": tags if tags is not None else {"role": "web", "k8s": "lab/k1"},
        "Status": "alive", "ProtocolMin": 1, "ProtocolMax": 5, "ProtocolCur": 2,
        "DelegateMin": 2, "DelegateMax": 5, "DelegateCur": 4,
    }  # fmt: skip


def _feed_members_body(body: bytes) -> Connection:
    conn = ready()
    seq = conn.send("members")
    data = encode_reply(seq) + body
    for i in range(0, len(data), 65536):  # as the socket delivers it
        conn.receive_data(data[i : i + 65536])
    return conn


def test_a_full_reply_of_max_list_members_is_accepted() -> None:
    members = [_member(i) for i in range(protocol.MAX_LIST)]
    conn = _feed_members_body(msgpack.packb({"Members": members}))
    (reply,) = conn.next_events()
    assert isinstance(reply, Reply) and len(reply.body) == protocol.MAX_LIST


def _packed(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _items_bomb() -> bytes:
    # 1 MiB on the wire, ~1.2 million empty maps decoded (64 bytes each): the byte limit
    # alone would let it through, the item count does not.
    return _packed({"Members": [[{}] * 120] * 10_000})


@pytest.mark.parametrize(
    ("body", "why"),
    [
        pytest.param(
            _packed({"Members": [_member(0)] * (protocol.MAX_LIST + 1)}),
            "exceeds max_array_len", id="members-per-reply",
        ),
        pytest.param(
            _packed({"Members": [_member(0, {"k": "v" * (protocol.MAX_STRING + 1)})]}),
            "exceeds max_str_len", id="string",
        ),
        pytest.param(
            _packed({"Members": [dict(_member(0), Addr=b"\0" * (protocol.MAX_STRING + 1))]}),
            "exceeds max_bin_len", id="binary",
        ),
        pytest.param(
            _packed({"Members": [_member(0, {f"t{j}": "" for j in range(protocol.MAX_LIST + 1)})]}),
            "exceeds max_map_len", id="tags-per-member",
        ),
        pytest.param(
            _packed({"Members": [{"Name": "x" * 200_000}] * 100}),
            f"more than {protocol.MAX_MESSAGE_BYTES} bytes", id="total-bytes",
        ),
        pytest.param(_items_bomb(), "values", id="total-items"),
    ],
)  # fmt: skip
def test_oversized_replies_end_in_a_protocol_error_with_bounded_memory(
    body: bytes, why: str
) -> None:
    import tracemalloc

    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError, match="oversized message") as err:
            _feed_members_body(body)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert why in str(err.value)
    assert peak < 64 * 1024 * 1024  # without the limits: hundreds of MiB
