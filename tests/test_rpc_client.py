"""The socket client against real `serf agent` processes (Debian's 0.9.4)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import pytest

from serfbridge.errors import AuthError, BudgetError, QueryError, TagsTooLarge
from serfbridge.rpc.budget import encoded_tags_size
from serfbridge.rpc.client import SerfClient, Stream
from serfbridge.rpc.models import (
    LogLine,
    MemberEvent,
    QueryEvent,
    QueryRecord,
    Reconnected,
    StreamItem,
    UserEvent,
)
from tests.lab.serfagents import AgentSpec, SerfCluster

pytestmark = pytest.mark.integration


def wait_item(
    stream: Stream, match: Callable[[StreamItem], bool], timeout: float = 15.0
) -> StreamItem:
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        item = stream.get(timeout=max(0.01, deadline - time.monotonic()))
        if item is not None:
            seen.append(item)
            if match(item):
                return item
    raise AssertionError(f"no matching item within {timeout}s; saw {seen}")


def member_event(kind: str, name: str) -> Callable[[StreamItem], bool]:
    return lambda i: (
        isinstance(i, MemberEvent) and i.event == kind and any(m.name == name for m in i.members)
    )


def test_members_lists_all_three_with_fields(serf3: SerfCluster) -> None:
    with SerfClient(serf3.agents[0].rpc_addr) as client:
        found = {m.name: m for m in client.members()}
    assert set(found) == {"n1", "n2", "n3"}
    for agent in serf3.agents:
        m = found[agent.name]
        assert (m.addr, m.port, m.status) == ("127.0.0.1", agent.bind_port, "alive")
        assert m.tags == {}


def test_members_filtered_is_anchored_like_serf(serf_cluster) -> None:
    cluster = serf_cluster(
        specs=[AgentSpec("n1", tags={"role": "web"}), AgentSpec("n2", tags={"role": "db"})]
    )
    with SerfClient(cluster.agents[0].rpc_addr) as client:
        assert [m.name for m in client.members_filtered(tags={"role": "d."})] == ["n2"]
        assert client.members_filtered(tags={"role": "d"}) == ()
        assert {m.name for m in client.members_filtered(status="alive")} == {"n1", "n2"}
        assert client.members_filtered(name="n") == ()


def test_tags_set_and_delete_show_on_another_agent(serf3: SerfCluster) -> None:
    a, b = serf3.agents[0], serf3.agents[1]
    with SerfClient(a.rpc_addr) as client:
        assert client.tags({"a": "1"}) == {"a": "1"}
    serf3.wait_for(
        lambda: any(m["Name"] == "n1" and m["Tags"].get("a") == "1" for m in serf3.members(b)),
        timeout=10,
    )
    with SerfClient(a.rpc_addr) as client:
        client.tags(delete=["a"])
    serf3.wait_for(
        lambda: any(m["Name"] == "n1" and "a" not in m["Tags"] for m in serf3.members(b)),
        timeout=10,
    )


def test_budget_agrees_with_the_agent_at_the_512_byte_edge(serf_cluster, tmp_path) -> None:
    tags_file = tmp_path / "tags.json"
    cluster = serf_cluster(1, specs=[AgentSpec("edge", tags_file=tags_file)])
    rpc = cluster.agents[0].rpc_addr
    with SerfClient(rpc) as client:
        client.tags({"role": "db"})
        base = {"role": "db", "big": ""}
        fill = 512 - encoded_tags_size(base)
        # The str8-vs-raw16 boundary makes the edge non-linear; search the exact largest value.
        while encoded_tags_size({**base, "big": "x" * fill}) > 512:
            fill -= 1
        while encoded_tags_size({**base, "big": "x" * (fill + 1)}) <= 512:
            fill += 1
        assert client.tags({"big": "x" * fill}) == {"role": "db", "big": "x" * fill}
        before_file = tags_file.read_text()
        with pytest.raises(BudgetError) as refused:
            client.tags({"big": "x" * (fill + 1)})
        assert (refused.value.size, refused.value.limit) == (513, 512)
        assert "513" in str(refused.value) and "512" in str(refused.value)
        assert tags_file.read_text() == before_file
        assert client.local_tags()["big"] == "x" * fill
        # The other side of the edge: sent anyway (bypassing our check), the agent refuses.
        reply = client.call("tags", {"Tags": {"big": "x" * (fill + 1)}, "DeleteTags": []})
        with pytest.raises(TagsTooLarge):
            reply.raise_for_error()
        assert "exceeds limit of 512" in reply.error


def test_auth_key_right_wrong_and_missing(serf_cluster) -> None:
    cluster = serf_cluster(1, specs=[AgentSpec("sec", rpc_auth="s3cret-key")])
    rpc = cluster.agents[0].rpc_addr
    with SerfClient(rpc, auth_key="s3cret-key") as client:
        assert [m.name for m in client.members()] == ["sec"]
        with client.stream("user") as events:
            client.event("authd", b"", coalesce=False)
            assert isinstance(wait_item(events, lambda i: isinstance(i, UserEvent)), UserEvent)
    for key in (None, "wrong"):
        with SerfClient(rpc, auth_key=key) as client, pytest.raises(AuthError) as err:
            client.tags({"x": "1"}, current={})
        assert "authentication failed" in str(err.value)
        assert "s3cret-key" not in str(err.value) and "s3cret-key" not in repr(client)


def test_stream_delivers_member_events_user_events_and_queries(serf3: SerfCluster) -> None:
    n1, n3 = serf3.agents[0], serf3.agents[2]
    with SerfClient(n1.rpc_addr) as client, SerfClient(n3.rpc_addr) as other:
        events = client.stream("*")
        other.tags({"color": "blue"})
        wait_item(events, member_event("member-update", "n3"))
        other.event("deploy", b"v1", coalesce=False)
        got = wait_item(events, lambda i: isinstance(i, UserEvent) and i.name == "deploy")
        assert isinstance(got, UserEvent) and got.payload == b"v1"

        # A query from n3 is seen on n1's stream and answered on that same connection.
        answers = other.query("ping", b"hi", timeout_s=2.0)
        q = wait_item(events, lambda i: isinstance(i, QueryEvent) and i.name == "ping")
        assert isinstance(q, QueryEvent)
        events.respond(q.id, b"pong")
        records = list(answers)
        assert QueryRecord("response", "n1", b"pong") in records
        assert records[-1].type == "done"  # type: ignore[union-attr]
        with pytest.raises(QueryError, match=r"response already sent|No pending"):
            events.respond(q.id, b"again")

        serf3.add_agent(AgentSpec("n4"))
        wait_item(events, member_event("member-join", "n4"))
        with SerfClient(serf3.agent("n4").rpc_addr) as n4:
            n4.leave()
        wait_item(events, member_event("member-leave", "n4"))
        n3.kill()
        wait_item(events, member_event("member-failed", "n3"), timeout=30)
        events.stop()
        assert list(events) == []  # stop ends the iteration cleanly


def test_stop_then_more_events_on_other_streams_keep_flowing(serf3: SerfCluster) -> None:
    with SerfClient(serf3.agents[0].rpc_addr) as client:
        first, second = client.stream("user"), client.stream("user:x")
        first.stop()
        for _ in range(5):
            client.event("x", b"", coalesce=False)
        assert isinstance(wait_item(second, lambda i: isinstance(i, UserEvent)), UserEvent)
        assert first.get(timeout=0.5) is None


def test_stream_reconnects_after_agent_restart(serf3: SerfCluster) -> None:
    n1 = serf3.agents[0]
    with SerfClient(n1.rpc_addr) as client:
        events = client.stream("user")
        client.event("before", b"", coalesce=False)
        wait_item(events, lambda i: isinstance(i, UserEvent) and i.name == "before")
        n1.kill()
        n1.restart()
        wait_item(events, lambda i: isinstance(i, Reconnected), timeout=20)
        with SerfClient(serf3.agents[1].rpc_addr) as other:
            other.event("after", b"", coalesce=False)
        got = wait_item(events, lambda i: isinstance(i, UserEvent) and i.name == "after")
        assert isinstance(got, UserEvent)
        # The command connection heals too, on the next call.
        assert {m.name for m in client.members() if m.status == "alive"} >= {"n1"}


def test_monitor_replays_and_follows_the_log(serf3: SerfCluster) -> None:
    with SerfClient(serf3.agents[0].rpc_addr) as client, client.monitor("DEBUG") as lines:
        first = lines.get(timeout=5)
    # The replayed log buffer (§3 monitor) starts with the agent's own first line.
    assert isinstance(first, LogLine)
    assert re.fullmatch(
        r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \[INFO\] agent: Serf agent starting", first.line
    )


def test_stats_and_coordinates(serf3: SerfCluster) -> None:
    with SerfClient(serf3.agents[0].rpc_addr) as client:
        stats = client.stats()
        assert stats["agent"]["name"] == "n1" and stats["serf"]["members"] == "3"
        client.get_coordinate("n2")
        assert client.get_coordinate("nope") is None
        client.force_leave("nope", prune=True)
        assert client.join([serf3.agents[1].bind_addr]) == 1
