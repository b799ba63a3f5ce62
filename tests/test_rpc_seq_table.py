"""The core's one pending-Seq table and its two error classes (no socket, no agent).

Each Seq maps to an explicit ``Expectation``: its reply shape and its phase. These tests
walk Seqs through their lives and check that entries go when nothing more can come
(``reference/serf-rpc.md`` §1, §1.1, §1.2), and that our misuse raises
``LocalProtocolError`` while the peer's raises ``RemoteProtocolError``.
"""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serfbridge.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from serfbridge.rpc import protocol
from serfbridge.rpc.protocol import (
    Connection,
    Expectation,
    Phase,
    Reply,
    Shape,
    State,
    StreamEnded,
    StreamRecord,
)
from tests.lab.fake_core_agent import encode_reply

USER = {"Event": "user", "Name": "u", "Payload": None, "LTime": 1, "Coalesce": False}


def ready() -> Connection:
    conn = Connection()
    conn.receive_data(encode_reply(0))
    conn.next_events()
    conn.data_to_send()
    return conn


def record(seq: int, body: object = USER) -> bytes:
    return encode_reply(seq) + msgpack.packb(body, use_bin_type=True)


def open_stream(conn: Connection, command: str = "stream") -> int:
    body = {"LogLevel": "INFO"} if command == "monitor" else {"Type": "*"}
    seq = conn.send(command, body)
    conn.receive_data(encode_reply(seq))
    conn.next_events()
    return seq


def stop(conn: Connection, target: int) -> None:
    seq = conn.send("stop", {"Stop": target})
    conn.receive_data(encode_reply(seq))
    assert conn.next_events() == [Reply(seq, "stop", "")]


@pytest.mark.parametrize(
    ("command", "body", "shape"),
    [
        pytest.param("members", None, Shape.HEADER_BODY, id="members"),
        pytest.param("stats", None, Shape.HEADER_BODY, id="stats"),
        pytest.param("join", {"Existing": [], "Replay": False}, Shape.HEADER_BODY, id="join"),
        pytest.param("get-coordinate", {"Node": "n"}, Shape.HEADER_BODY, id="coordinate"),
        pytest.param("tags", {"Tags": {}, "DeleteTags": []}, Shape.HEADER, id="tags"),
        pytest.param("leave", None, Shape.HEADER, id="leave"),
        pytest.param("stream", {"Type": "*"}, Shape.STREAM, id="stream"),
        pytest.param("monitor", {"LogLevel": "INFO"}, Shape.STREAM, id="monitor"),
        pytest.param("query", {"Name": "q"}, Shape.STREAM, id="query"),
    ],
)
def test_each_request_gets_an_explicit_expectation(command, body, shape) -> None:
    conn = ready()
    seq = conn.send(command, body)
    assert conn.maybe_expectation(seq) == Expectation(command, shape, body is not None)


def test_a_reply_removes_its_entry_and_the_table_holds_only_what_is_open() -> None:
    conn = ready()
    members, tags = conn.send("members"), conn.send("tags", {"Tags": {}, "DeleteTags": []})
    assert conn.outstanding == 2
    conn.receive_data(encode_reply(tags) + encode_reply(members) + msgpack.packb({"Members": []}))
    assert [type(e) for e in conn.next_events()] == [Reply, Reply]
    assert conn.outstanding == 0
    assert conn.maybe_expectation(members) is None


def test_a_stream_moves_from_reply_to_streaming_to_draining() -> None:
    conn = ready()
    seq = conn.send("stream", {"Type": "*"})
    phases = [conn.maybe_expectation(seq).phase]  # type: ignore[union-attr]
    conn.receive_data(encode_reply(seq))
    assert conn.next_events() == [Reply(seq, "stream", "")]
    phases.append(conn.maybe_expectation(seq).phase)  # type: ignore[union-attr]
    stop(conn, seq)
    entry = conn.maybe_expectation(seq)
    assert entry is not None
    phases.append(entry.phase)
    assert phases == [Phase.REPLY, Phase.STREAMING, Phase.DRAINING]
    assert entry.drain_left == 513 and not conn.is_stream(seq)


@pytest.mark.parametrize("command", ["stream", "monitor"])
def test_a_drained_stream_leaves_the_table_after_the_agents_buffer_is_spent(command) -> None:
    conn = ready()
    seq = open_stream(conn, command)
    body = USER if command == "stream" else {"Log": "x"}
    stop(conn, seq)
    conn.receive_data(record(seq, body) * 512)  # the agent's 512-record buffer (§4)
    assert conn.maybe_expectation(seq) is not None
    conn.receive_data(record(seq, body))  # and the one its sender had already taken
    assert conn.next_events() == []  # drained records are dropped, never delivered
    assert conn.maybe_expectation(seq) is None and conn.outstanding == 0
    with pytest.raises(RemoteProtocolError, match="no request outstanding"):
        conn.receive_data(record(seq, body))  # a 514th cannot come from a real agent


def test_stopping_many_streams_keeps_only_the_newest_draining_entries() -> None:
    conn = ready()
    seqs = [open_stream(conn) for _ in range(300)]
    for seq in seqs:
        stop(conn, seq)
    assert conn.outstanding == 256
    assert conn.maybe_expectation(seqs[43]) is None
    assert conn.maybe_expectation(seqs[44]) is not None
    conn.receive_data(record(seqs[-1]))  # a late record of a kept one is still dropped
    assert conn.next_events() == []


def test_a_query_leaves_the_table_at_done() -> None:
    conn = ready()
    seq = open_stream(conn, "query")
    conn.receive_data(record(seq, {"Type": "done", "From": "", "Payload": None}))
    assert isinstance(conn.next_events()[0], StreamRecord)
    assert conn.maybe_expectation(seq) is None


def test_the_auth_echo_entry_goes_with_the_echo() -> None:
    conn = ready()
    seq = conn.send("event", {"Name": "e", "Payload": b"", "Coalesce": False})
    conn.receive_data(encode_reply(seq, "Authentication required"))
    assert conn.maybe_expectation(seq).phase is Phase.ECHO  # type: ignore[union-attr]
    conn.receive_data(encode_reply(seq, "Authentication required"))
    assert conn.outstanding == 0 and len(conn.next_events()) == 1


def test_stop_of_a_request_that_is_no_stream_leaves_it_alone() -> None:
    conn = ready()
    members = conn.send("members")
    stop(conn, members)
    assert conn.maybe_expectation(members) == Expectation("members", Shape.HEADER_BODY, False)


def test_events_are_the_cores_typed_values() -> None:
    conn = ready()
    seq = open_stream(conn, "query")
    conn.receive_data(record(seq, {"Type": "done", "From": "", "Payload": None}))
    events = conn.next_events()
    assert [type(e) for e in events] == [StreamRecord, StreamEnded]


# --- who is at fault: us or the peer -----------------------------------------------------


def failed() -> Connection:
    conn = ready()
    with pytest.raises(RemoteProtocolError):
        conn.receive_data(encode_reply(99))
    return conn


@pytest.mark.parametrize(
    ("misuse", "match"),
    [
        pytest.param(lambda c: c.send("frobnicate"), "not a request", id="unknown-command"),
        pytest.param(lambda c: c.send("auth", {"AuthKey": "k"}), "not a request", id="auth"),
        pytest.param(lambda c: c.send("tags"), "needs", id="missing-body"),
        pytest.param(lambda c: c.send("stats", {}), "takes no", id="stray-body"),
        pytest.param(lambda c: c.send("event", {"Name": object()}), "encode", id="unencodable"),
        pytest.param(lambda c: c.send("event", {"ID": 2**64}), "encode", id="int-too-big"),
    ],
)
def test_our_misuse_is_a_local_protocol_error(misuse, match) -> None:
    conn = ready()
    with pytest.raises(LocalProtocolError, match=match):
        misuse(conn)
    assert conn.state is State.READY and conn.outstanding == 0  # nothing was queued


@pytest.mark.parametrize(
    "use",
    [
        pytest.param(lambda c: c.send("members"), id="send"),
        pytest.param(lambda c: c.receive_data(b"\x80"), id="receive"),
    ],
)
def test_using_a_failed_connection_is_a_local_protocol_error(use) -> None:
    conn = failed()
    with pytest.raises(LocalProtocolError, match="connection failed"):
        use(conn)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        pytest.param(encode_reply(99), "no request outstanding", id="unknown-seq"),
        pytest.param(msgpack.packb({"Seq": "1", "Error": ""}), "malformed", id="seq-not-int"),
        pytest.param(msgpack.packb({"Seq": True}), "malformed", id="seq-bool"),
        pytest.param(msgpack.packb([1, 2]), "expected a map", id="header-list"),
        pytest.param(b"\xc1", "undecodable", id="reserved-byte"),
    ],
)
def test_the_peers_fault_is_a_remote_protocol_error(data: bytes, match: str) -> None:
    conn = ready()
    with pytest.raises(RemoteProtocolError, match=match) as err:
        conn.receive_data(data)
    assert not isinstance(err.value, LocalProtocolError)
    assert conn.state is State.FAILED


def test_both_stay_protocol_errors_for_existing_handlers() -> None:
    assert issubclass(LocalProtocolError, ProtocolError)
    assert issubclass(RemoteProtocolError, ProtocolError)
    assert not issubclass(LocalProtocolError, RemoteProtocolError)


# --- the table against a model of it --------------------------------------------------------

_OPS = st.lists(
    st.tuples(st.sampled_from(["open", "stop", "late-record"]), st.integers(0, 1000)),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(ops=_OPS, limit=st.integers(1, 4), spent=st.integers(1, 3))
def test_the_table_holds_exactly_the_open_and_the_recently_stopped(ops, limit, spent) -> None:
    # Small limits so a short run hits both ends: the eviction and a spent drain.
    model_open: list[int] = []
    model_draining: dict[int, int] = {}  # seq -> records left, in stop order
    conn = ready()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(protocol, "MAX_DRAINING", limit)
        patch.setattr(protocol, "DRAIN_RECORDS", spent)
        for op, pick in ops:
            if op == "open":
                model_open.append(open_stream(conn))
            elif op == "stop" and model_open:
                seq = model_open.pop(pick % len(model_open))
                stop(conn, seq)
                model_draining[seq] = spent
                for old in list(model_draining)[: max(0, len(model_draining) - limit)]:
                    del model_draining[old]
            elif op == "late-record" and model_draining:
                seq = list(model_draining)[pick % len(model_draining)]
                conn.receive_data(record(seq))
                assert conn.next_events() == []
                model_draining[seq] -= 1
                if not model_draining[seq]:
                    del model_draining[seq]
            assert conn.outstanding == len(model_open) + len(model_draining)
            assert all(conn.is_stream(s) for s in model_open)
            assert all(conn.maybe_expectation(s) is not None for s in model_draining)
