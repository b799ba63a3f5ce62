"""Bad settings end the real daemon at start with exit 2; the RPC key works with a newline.

``serfbridge run`` as a real process (``tests.lab.bridges.BridgeProcess``, without ``-v``
so errors look as users see them): before issue 13 each of these started and then
failed every pass, so systemd's ``RestartPreventExitStatus=2`` never applied.
The key cases run against a real agent that has an RPC auth key.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from serfbridge.cli import cli
from tests.lab.bridges import BridgeProcess
from tests.lab.serfagents import AgentSpec, free_port

#: A kubeconfig that loads but points at a port where nothing listens: the settings
#: checks come first, and the handler socket is opened after the client is made.
KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
"""

START_CASES = [
    pytest.param({"args": ["--replicas", "0"]}, "--replicas", id="replicas-0"),
    pytest.param({"args": ["--tag-limit", "-1"]}, "--tag-limit", id="tag-limit-negative"),
    pytest.param({"args": ["--selector", "a=b=c"]}, "--selector", id="selector"),
    pytest.param({"global_args": ["--label-prefix", "x/y"]}, "--label-prefix", id="prefix"),
    pytest.param({"args": ["--tag-allow", "("]}, "--tag-allow", id="tag-allow"),
    # no fast tuning for these: its --resync 10 would come after and win
    pytest.param({"args": ["--resync", "0"], "tuning": ()}, "--resync", id="resync-0"),
    pytest.param({"args": ["--resync", "nan"], "tuning": ()}, "--resync", id="resync-nan"),
    pytest.param(
        {"config_text": "SERFBRIDGE_REPLICAS=0\n"}, "SERFBRIDGE_REPLICAS", id="from-the-file"
    ),
    pytest.param(
        {"env": {"SERFBRIDGE_TAG_LIMIT": "-1"}}, "SERFBRIDGE_TAG_LIMIT", id="from-the-env"
    ),
    pytest.param({"config_text": "SERF_RPC_AUTH S3cr3tKey\n"}, "expected KEY=value", id="bad-line"),
    pytest.param(
        {"args": ["--handler-socket", "/proc/x/y"]}, "--handler-socket /proc/x/y", id="socket"
    ),
]


@pytest.mark.integration
@pytest.mark.parametrize(("options", "named"), START_CASES)
def test_the_daemon_exits_2_at_start_with_one_line(
    tmp_path: Path, options: dict[str, object], named: str
) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG)
    bridge = BridgeProcess(
        node="n1",
        rpc_addr=f"127.0.0.1:{free_port()}",
        kubeconfig=str(kubeconfig),
        workdir=tmp_path,
        verbose=False,
        **options,  # type: ignore[arg-type]
    )
    bridge.start()
    try:
        assert bridge.proc is not None
        code = bridge.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running after 60 s:\n{bridge.log_tail()}")
    finally:
        bridge.kill()
    text = bridge.log_text()
    lines = [line for line in text.splitlines() if line.strip()]
    assert code == 2, bridge.log_tail()
    assert "Traceback" not in text and "S3cr3tKey" not in text
    assert lines[-1].startswith("error: ") and named in lines[-1], lines
    if "--handler-socket" not in named:
        assert len(lines) == 1, lines  # refused before anything started
    # The socket is opened after the Kubernetes client started (and logged its retries).


# --- the RPC key, stripped, against a real agent -----------------------------------------

KEY = "k3y-S3cret"


@pytest.mark.integration
def test_a_key_with_a_trailing_newline_authenticates(
    serf_cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = serf_cluster(specs=[AgentSpec("auth1", rpc_auth=KEY)])
    addr = cluster.agent("auth1").rpc_addr
    monkeypatch.delenv("SERF_RPC_AUTH", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    secret = tmp_path / "secret"
    secret.write_text(f"{KEY}\n")  # as `kubectl create secret generic --from-file` stores it
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "serf-rpc-auth").write_text(f"{KEY}\r\n")
    config = tmp_path / "config"
    runner = CliRunner()
    cases: list[tuple[list[str], str, dict[str, str]]] = [
        (["--rpc-auth-file", str(secret)], "", {}),
        ([], "", {"SERF_RPC_AUTH": f"{KEY}\n"}),
        (["--rpc-auth", f" {KEY}\n"], "", {}),
        ([], f"SERF_RPC_AUTH='{KEY} '\n", {}),
        ([], "", {"CREDENTIALS_DIRECTORY": str(creds)}),
    ]
    for args, file, env in cases:
        config.write_text(file)
        result = runner.invoke(
            cli, ["--config", str(config), "--rpc-addr", addr, *args, "members"], env=env
        )
        assert result.exit_code == 0, (args, env, result.output)
        assert "auth1" in result.output
    config.write_text("")
    result = runner.invoke(
        cli, ["--config", str(config), "--rpc-addr", addr, "--rpc-auth", "wrong-K3y", "members"]
    )
    assert result.exit_code == 1, result.output
    assert "authentication failed" in result.stderr and "wrong-K3y" not in result.output
