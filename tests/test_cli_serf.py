"""The Serf half of the CLI: argument handling, exit codes and output, against real agents."""

from __future__ import annotations

import json
import subprocess
import time

import pytest
from click.testing import CliRunner

from serfbridge.cli import cli
from tests.lab import commands
from tests.lab.serfagents import AgentSpec, SerfCluster


def run(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["tags", "set", "novalue"], "must be key=value", id="bad-pair"),
        pytest.param(["tags", "set", "=v"], "must be key=value", id="empty-key"),
        pytest.param(["members", "--tag", "role=("], "not a valid regex", id="bad-regex"),
        pytest.param(["members", "--status", "(?=x)"], "lookaround", id="go-incompatible"),
        pytest.param(["stream", "member-join, user"], "spaces", id="filter-with-space"),
        pytest.param(["--rpc-addr", "nonsense", "members"], "host:port", id="bad-addr"),
    ],
)
def test_bad_input_exits_2_with_one_line(args: list[str], message: str) -> None:
    result = run(*args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_unreachable_agent_exits_1() -> None:
    result = run("--rpc-addr", "127.0.0.1:1", "members")
    assert result.exit_code == 1
    assert "cannot reach the serf agent" in result.stderr


def test_version_and_help_name_env_vars() -> None:
    assert run("--version").output.startswith("serfbridge, version")
    for command in (["members"], ["tags", "set"], ["event"], ["query"], ["monitor"], ["stream"]):
        text = run(*command, "--help").output
        assert "SERF_RPC_ADDR" in text, command


@pytest.mark.integration
def test_members_json_and_filters(serf_cluster) -> None:
    cluster = serf_cluster(
        specs=[
            AgentSpec("n1", tags={"role": "web"}),
            AgentSpec("n2"),
            AgentSpec("n3", tags={"role": "db"}),
        ]
    )
    env = {"SERF_RPC_ADDR": cluster.agents[1].rpc_addr}
    listed = json.loads(run("members", "--json", env=env).output)["members"]
    assert {m["name"] for m in listed} == {"n1", "n2", "n3"}
    n3 = next(m for m in listed if m["name"] == "n3")
    assert n3["addr"] == cluster.agents[2].bind_addr and n3["port"] == cluster.agents[2].bind_port
    assert n3["status"] == "alive" and n3["tags"] == {"role": "db"}
    by_tag = json.loads(run("members", "--json", "--tag", "role=d.", env=env).output)
    assert [m["name"] for m in by_tag["members"]] == ["n3"]
    cluster.agents[0].kill()
    cluster.wait_status("n1", "failed", via="n2", timeout=30)
    failed = run("members", "--status", "failed", env=env)
    assert failed.exit_code == 0 and failed.output.split()[0] == "n1"
    alive = run("members", "--status", "alive", env=env).output
    assert "n1 " not in alive and "n2" in alive


@pytest.mark.integration
def test_tags_set_delete_and_oversized(serf_cluster, tmp_path) -> None:
    tags_file = tmp_path / "tags.json"
    cluster: SerfCluster = serf_cluster(
        specs=[AgentSpec("n1", tags_file=tags_file), AgentSpec("n2")]
    )
    env = {"SERF_RPC_ADDR": cluster.agents[0].rpc_addr}
    assert run("tags", "set", "a=1", "b=x=y", env=env).exit_code == 0
    cluster.wait_for(
        lambda: any(
            m["Name"] == "n1" and m["Tags"] == {"a": "1", "b": "x=y"} for m in cluster.members("n2")
        ),
        timeout=10,
    )
    assert run("tags", "delete", "b", env=env).exit_code == 0
    cluster.wait_for(
        lambda: any(m["Name"] == "n1" and m["Tags"] == {"a": "1"} for m in cluster.members("n2")),
        timeout=10,
    )
    before = tags_file.read_text()
    log_before = cluster.agents[0].log_text()
    result = run("tags", "set", "big=" + "x" * 600, env=env)
    assert result.exit_code == 2
    assert "would take 613 bytes" in result.stderr and "limit is 512" in result.stderr
    assert tags_file.read_text() == before
    assert [m["Tags"] for m in cluster.members("n1") if m["Name"] == "n1"] == [{"a": "1"}]
    assert cluster.agents[0].log_text().count("Encoded length") == log_before.count(
        "Encoded length"
    )  # nothing was sent


@pytest.mark.integration
def test_auth_via_flag_env_and_file_and_key_never_logged(serf_cluster, tmp_path) -> None:
    key = "k3y-that-must-not-leak"
    cluster = serf_cluster(1, specs=[AgentSpec("sec", rpc_auth=key)])
    rpc = cluster.agents[0].rpc_addr
    key_file = tmp_path / "key"
    key_file.write_text(key + "\n")
    assert run("--rpc-addr", rpc, "--rpc-auth", key, "members").exit_code == 0
    assert run("--rpc-addr", rpc, "members", env={"SERF_RPC_AUTH": key}).exit_code == 0
    assert run("--rpc-addr", rpc, "--rpc-auth-file", str(key_file), "members").exit_code == 0
    for extra in ([], ["--rpc-auth", "wrong"]):
        # A real process with -v, so every log line we emit is captured.
        proc = subprocess.run(
            [commands.command(), "-vv", "--rpc-addr", rpc, *extra, "members"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert proc.returncode == 1
        assert "authentication failed" in proc.stderr
    proc = subprocess.run(
        [
            commands.command(),
            "-vv",
            "--rpc-addr",
            rpc,
            "--rpc-auth-file",
            str(key_file),
            "members",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0
    assert key not in proc.stderr + proc.stdout


@pytest.mark.integration
def test_event_stream_query_and_monitor(serf3: SerfCluster) -> None:
    n1, n2 = serf3.agents[0], serf3.agents[1]
    follower = subprocess.Popen(
        [
            commands.command(),
            "--rpc-addr",
            n1.rpc_addr,
            "stream",
            "user",
            "--json",
            "--count",
            "1",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        # Wait until the follower's stream is registered (its connection shows in the log).
        serf3.wait_for(lambda: n1.log_text().count("Accepted client") >= 1, timeout=10)
        time.sleep(0.5)
        assert (
            run("--rpc-addr", n2.rpc_addr, "event", "--no-coalesce", "deploy", "v9").exit_code == 0
        )
        out, _ = follower.communicate(timeout=20)
    finally:
        follower.kill()
    assert json.loads(out)["name"] == "deploy" and json.loads(out)["payload"] == "v9"
    result = run("--rpc-addr", n1.rpc_addr, "query", "--ack", "--timeout", "1", "ping")
    assert result.exit_code == 0
    assert "ack from n1" in result.output and result.output.strip().endswith("done")
    mon = run("--rpc-addr", n1.rpc_addr, "monitor", "--count", "2")
    assert mon.exit_code == 0 and len(mon.output.splitlines()) == 2
