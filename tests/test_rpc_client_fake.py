"""``SerfClient`` over the in-memory transport to a FAKE agent: no process, no socket.

The shell (``rpc.client``, ``rpc.hub``, ``rpc.wire``) under reconnects, streams,
timeouts and a stop with a full buffer. ``FakeCoreAgent`` plays the agent's side
(``tests/lab/fake_core_agent.py``); the real-agent versions of the behaviours the fake
can show stay in ``test_rpc_client.py``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from serfbridge.errors import (
    AuthError,
    BudgetError,
    InvalidFilter,
    QueryError,
    RPCTimeout,
    TagsTooLarge,
    TransportError,
)
from serfbridge.rpc.client import SerfClient
from serfbridge.rpc.models import (
    LogLine,
    Member,
    MemberEvent,
    QueryEvent,
    QueryRecord,
    Reconnected,
    StreamItem,
    UserEvent,
)
from serfbridge.rpc.stream import STREAM_BUFFER, Stream
from tests.lab.fake_core_agent import FakeCoreAgent, member


@pytest.fixture
def agent() -> Iterator[FakeCoreAgent]:
    fake = FakeCoreAgent("n1")
    yield fake
    fake.close()


@pytest.fixture
def client(agent: FakeCoreAgent) -> Iterator[SerfClient]:
    with agent.client(timeout=2.0) as c:
        yield c


def wait_item(stream: Stream, match: Callable[[StreamItem], bool], timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        item = stream.get(timeout=max(0.01, deadline - time.monotonic()))
        if item is not None:
            seen.append(item)
            if match(item):
                return item
    raise AssertionError(f"no matching item within {timeout}s; saw {seen}")


def user(name: str) -> Callable[[StreamItem], bool]:
    return lambda i: isinstance(i, UserEvent) and i.name == name


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


# --- commands ---------------------------------------------------------------------------


def test_commands_round_trip(agent: FakeCoreAgent, client: SerfClient) -> None:
    agent.members.append(member("n2", tags={"role": "db"}, status="failed"))
    assert client.members() == (
        Member("n1", "127.0.0.1", 7946, {}, "alive", (1, 5, 2), (2, 5, 4)),
        Member("n2", "127.0.0.1", 7946, {"role": "db"}, "failed", (1, 5, 2), (2, 5, 4)),
    )
    assert client.tags({"a": "1", "b": "2"}) == {"a": "1", "b": "2"}
    assert client.tags(delete=["a"]) == {"b": "2"}
    assert client.local_tags() == {"b": "2"} == agent.tags
    assert client.join(["10.0.0.1:7946", "10.0.0.2:7946"]) == 2
    assert client.get_coordinate("n2") is None
    client.force_leave("n2", prune=True)
    assert agent.connects == 1  # one command connection, kept for every call


def test_tags_over_budget_are_refused_before_anything_is_sent(agent, client) -> None:
    with pytest.raises(BudgetError) as refused:
        client.tags({"big": "x" * 600}, current={})
    assert (refused.value.size, refused.value.limit) == (609, 512)  # 1 + 1 + (1+3) + (3+600)
    assert "tags" not in agent.requests


def test_the_agents_own_refusal_is_typed(client: SerfClient) -> None:
    reply = client.call("tags", {"Tags": {"big": "x" * 600}, "DeleteTags": []})
    with pytest.raises(TagsTooLarge):
        reply.raise_for_error()
    assert reply.error == "Encoded length of tags exceeds limit of 512 bytes"


def test_a_silent_agent_times_out_and_the_connection_is_replaced(agent) -> None:
    with agent.client(timeout=0.3) as client:
        client.members()
        agent.silent.add("members")
        started = time.monotonic()
        with pytest.raises(RPCTimeout, match="did not answer in time"):
            client.members()
        assert 0.29 <= time.monotonic() - started < 1.5
        agent.silent.clear()
        assert [m.name for m in client.members()] == ["n1"]
    assert agent.connects == 2  # the late reply may still come: the old one was dropped


def test_a_dead_command_connection_is_redialled_once(agent, client) -> None:
    client.members()
    agent.kill()
    agent.restart()
    assert [m.name for m in client.members()] == ["n1"]
    assert agent.connects == 2


def test_an_agent_that_stays_down_is_a_transport_error(agent) -> None:
    agent.kill()
    with agent.client(connect_attempts=2) as client, pytest.raises(TransportError):
        client.members()


@pytest.mark.parametrize(
    ("key", "works"),
    [
        pytest.param("s3cret", True, id="right-key"),
        pytest.param("wrong", False, id="wrong-key"),
        pytest.param(None, False, id="no-key"),
    ],
)
def test_auth_key(key: str | None, works: bool) -> None:
    agent = FakeCoreAgent("sec", auth_key="s3cret")
    with agent.client(auth_key=key) as client:
        if works:
            assert [m.name for m in client.members()] == ["sec"]
            return
        with pytest.raises(AuthError, match="authentication failed") as err:
            client.tags({"x": "1"}, current={})
    assert "s3cret" not in str(err.value) and "s3cret" not in repr(client)
    agent.close()


# --- streams ----------------------------------------------------------------------------


def test_stream_delivers_user_and_member_events(agent, client) -> None:
    with client.stream("user,member-failed") as events:
        client.event("deploy", b"v1", coalesce=False)
        got = wait_item(events, user("deploy"))
        assert (got.payload, got.coalesce) == (b"v1", False)
        agent.emit_member_event("member-failed", "n1")
        failed = wait_item(events, lambda i: isinstance(i, MemberEvent))
        assert [m.name for m in failed.members] == ["n1"]
        assert failed.event == "member-failed"


def test_a_refused_filter_is_typed(client: SerfClient) -> None:
    with pytest.raises(InvalidFilter):
        client.stream("nonsense")


def test_stop_ends_iteration_and_other_streams_keep_flowing(agent, client) -> None:
    first, second = client.stream("user"), client.stream("user:x")
    first.stop()
    assert list(first) == []
    assert first.done
    client.event("x", b"", coalesce=False)
    assert isinstance(wait_item(second, user("x")), UserEvent)
    assert first.get(timeout=0.2) is None
    second.stop()


def test_monitor_yields_log_lines(client: SerfClient) -> None:
    with client.monitor("DEBUG") as lines:
        assert lines.get(timeout=2) == LogLine("[INFO] fake: monitoring")


def test_query_answered_on_the_stream_that_saw_it(agent, client) -> None:
    events = client.stream("query")
    answers = client.query("ping", b"hi", request_ack=True, timeout_s=0.5)
    seen = wait_item(events, lambda i: isinstance(i, QueryEvent))
    assert (seen.name, seen.payload) == ("ping", b"hi")
    events.respond(seen.id, b"pong")
    with pytest.raises(QueryError, match="No pending queries"):
        events.respond(seen.id, b"again")
    assert list(answers) == [
        QueryRecord("ack", "n1", b""),
        QueryRecord("response", "n1", b"pong"),
        QueryRecord("done", "", b""),
    ]
    assert answers.done
    events.stop()


def test_stream_reconnects_after_the_agent_restarts(agent, client) -> None:
    events = client.stream("user")
    client.event("before", b"", coalesce=False)
    wait_item(events, user("before"))
    agent.kill()
    time.sleep(0.3)  # the reader re-dials against a refusing agent, with backoff
    agent.restart()
    assert isinstance(wait_item(events, lambda i: isinstance(i, Reconnected)), Reconnected)
    wait_until(lambda: agent.open_streams() == 1)  # Reconnected comes once re-sent, not acked
    agent.emit_user_event("after")
    assert isinstance(wait_item(events, user("after")), UserEvent)
    assert agent.requests.count("stream") == 2  # re-subscribed on the new connection
    events.stop()


def test_a_query_in_flight_fails_when_the_connection_drops(agent, client) -> None:
    answers = client.query("slow", timeout_s=30)
    agent.kill()
    with pytest.raises(TransportError, match="connection lost during query"):
        list(answers)
    assert answers.done
    agent.restart()


def test_stream_request_times_out(agent) -> None:
    agent.silent.add("stream")
    with agent.client(timeout=0.3) as client, pytest.raises(RPCTimeout, match="'stream'"):
        client.stream("user")


def test_stop_with_a_full_buffer_ends_the_reader(agent, client) -> None:
    events = client.stream("user")
    agent.emit_user_event("flood", copies=STREAM_BUFFER + 5)
    wait_until(lambda: events.dropped == 5)  # nobody read: the buffer is full
    events.stop()
    got = list(events)  # returns: the end marker made room for itself
    assert events.done
    assert events.dropped == 6  # 5 past the full buffer, 1 evicted for the end
    assert len(got) == STREAM_BUFFER - 1
    assert [e.ltime for e in got] == sorted(e.ltime for e in got)  # oldest went first


def test_close_ends_every_open_stream(agent) -> None:
    client = agent.client()
    streams = [client.stream("user"), client.monitor()]
    client.close()
    for stream in streams:
        assert [i for i in stream if not isinstance(i, LogLine)] == []
        assert stream.done
    with pytest.raises(TransportError, match="closed"):
        streams[0].respond(1, b"")
