"""The real-Serf harness (tests.lab.serfagents + tests/fixtures_serf.py) does what it says.

Independent of serfbridge.rpc: membership is read with the harness's raw RPC helper.
"""

from __future__ import annotations

import json
import os
import shlex

import pytest

from tests.lab.serfagents import AgentSpec, SerfCluster, raw_request

pytestmark = pytest.mark.integration

ALL_ALIVE = {"n1": "alive", "n2": "alive", "n3": "alive"}


def pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_three_agents_see_three_alive(serf3):
    for agent in serf3.agents:
        assert serf3.statuses(agent) == ALL_ALIVE
        assert agent.running and agent.pid is not None
    assert len({agent.rpc_addr for agent in serf3.agents}) == 3
    assert len({agent.bind_port for agent in serf3.agents}) == 3


def test_rpc_auth_key_is_required_and_accepted(serf_cluster):
    cluster = serf_cluster(specs=[AgentSpec("n1", rpc_auth="s3cret"), AgentSpec("n2")])
    addr = cluster.agent("n1").rpc_addr

    assert raw_request(addr, "members") == ("Authentication required", None)
    assert raw_request(addr, "members", auth="wrong") == ("Invalid authentication token", None)
    error, body = raw_request(addr, "members", auth="s3cret")
    assert error == ""
    assert body is not None
    assert sorted(member["Name"] for member in body["Members"]) == ["n1", "n2"]
    assert "s3cret" not in cluster.agent("n1").log_text()


def test_kill_9_is_seen_as_failed_and_restart_brings_it_back(serf3):
    n3 = serf3.agent("n3")
    old_pid, ports = n3.pid, (n3.bind_port, n3.rpc_port)

    n3.kill()
    assert not n3.running
    serf3.wait_status("n3", "failed")

    n3.restart()
    assert n3.pid != old_pid
    assert (n3.bind_port, n3.rpc_port) == ports
    serf3.wait_status("n3", "alive")
    serf3.wait_for(lambda: serf3.statuses(n3) == ALL_ALIVE, what="n3 sees everyone")


def test_restart_of_a_running_agent_keeps_ports_and_rejoins(serf3):
    n1 = serf3.agent("n1")  # the first agent: it started with no -join of its own
    old_pid, rpc_addr = n1.pid, n1.rpc_addr

    n1.restart()

    assert n1.pid != old_pid and not pid_exists(old_pid)
    assert n1.rpc_addr == rpc_addr
    serf3.wait_for(lambda: serf3.statuses(n1) == ALL_ALIVE, what="n1 rejoined")
    serf3.wait_status("n1", "alive")


def test_sigstop_is_seen_as_failed_and_sigcont_recovers(serf3):
    n2 = serf3.agent("n2")

    n2.stop()
    serf3.wait_status("n2", "failed")
    n2.cont()
    serf3.wait_status("n2", "alive")

    assert serf3.statuses(n2) == ALL_ALIVE


def test_tags_file_and_initial_tags_show_in_members(serf_cluster, tmp_path):
    tags_file = tmp_path / "n2.tags.json"
    tags_file.write_text(json.dumps({"role": "db", "zone": "a"}))
    cluster = serf_cluster(
        specs=[
            AgentSpec("n1", tags={"role": "web", "dc-name": "east"}),
            AgentSpec("n2", tags_file=tags_file),
        ]
    )

    for viewer in cluster.agents:
        tags = {member["Name"]: member["Tags"] for member in cluster.members(viewer)}
        assert tags == {"n1": {"role": "web", "dc-name": "east"}, "n2": {"role": "db", "zone": "a"}}


def test_event_handler_runs_on_member_join(serf_cluster, tmp_path):
    out = tmp_path / "events.txt"
    script = tmp_path / "handler.sh"
    # stdin carries one "name<TAB>addr<TAB>role<TAB>tags" line per member (reference §7)
    script.write_text(f'#!/bin/sh\n{{ echo "$SERF_EVENT"; cat; }} >> {shlex.quote(str(out))}\n')
    script.chmod(0o755)
    handler = f"member-join={shlex.quote(str(script))}"
    cluster = serf_cluster(specs=[AgentSpec("n1", event_handlers=[handler]), AgentSpec("n2")])

    def handled_n2_join() -> bool:
        lines = out.read_text().splitlines() if out.exists() else []
        return "member-join" in lines and any(line.startswith("n2\t") for line in lines)

    cluster.wait_for(handled_n2_join, 10, what="the handler saw n2 join")


def test_exit_stops_every_pid_ever_started():
    with SerfCluster(2) as cluster:
        cluster.agent("n2").restart()  # a second n2 process, the first one already killed
        cluster.add_agent()  # n3
        cluster.agent("n3").stop()  # a frozen process must be stopped too
        pids, workdir = cluster.pids, cluster.workdir
        assert len(pids) == 4
    assert not any(pid_exists(pid) for pid in pids)
    assert not workdir.exists()
    assert "n3" in cluster.logs()  # log tails survive for failure reports
