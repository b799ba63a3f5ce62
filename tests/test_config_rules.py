"""Every setting is checked before anything starts, from flags, env and the file alike.

CliRunner through the real CLI; the daemon is replaced by a recorder, so a test sees
whether ``run`` got as far as constructing it. A bad value must end the command with
exit 2 and one line naming the setting (its flag and its env variable), and never echo
a string value: it may be the RPC key on the wrong line (issue 13, defects 8 and 10).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from click.testing import CliRunner, Result

from serfbridge import config, config_rules, daemon, logs
from serfbridge.cli import cli
from serfbridge.config import Settings
from serfbridge.errors import ConfigError

ALL_ENV = [*config.ENV_NAMES.values(), "SERFBRIDGE_CONFIG", "SERFBRIDGE_RPC_AUTH_FILE"]


class Recorder:
    """Stands in for ``daemon.Daemon``: records that ``run`` got past the settings."""

    seen: ClassVar[list[Settings]] = []
    reloads: ClassVar[list[Any]] = []

    def __init__(self, settings: Settings, *, reload: Any = None, **_: Any) -> None:
        Recorder.seen.append(settings)
        Recorder.reloads.append(reload)

    def run(self) -> int:
        return 0


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    for name in [*ALL_ENV, "CREDENTIALS_DIRECTORY"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(logs, "configure", lambda *a, **k: None)
    monkeypatch.setattr(daemon, "Daemon", Recorder)
    Recorder.seen = []
    yield CliRunner()


def invoke(
    runner: CliRunner,
    tmp_path: Path,
    args: list[str],
    *,
    file: str = "",
    env: dict[str, str] | None = None,
) -> Result:
    path = tmp_path / "config"
    path.write_text(file)
    return runner.invoke(cli, ["--config", str(path), *args], env=env or {})


def assert_refused(result: Result, name: str) -> None:
    """Exit 2, one line on stderr naming the setting, no traceback, daemon never built."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert config_rules.setting_label(name) in lines[0], lines[0]
    assert "Traceback" not in result.output
    assert Recorder.seen == []


# (setting, bad raw value): every setting of config.Settings has at least one case.
BAD = [
    ("rpc_addr", "nonsense"),
    ("rpc_addr", "127.0.0.1:0"),
    ("rpc_addr", "127.0.0.1:99999"),
    ("rpc_addr", "a b:7373"),
    ("kubeconfig", "/etc/\x01kube"),
    ("cluster", "my lab"),
    ("cluster", "a/b"),
    ("cluster", "x" * 64),
    ("node_name", "Node_1"),
    ("node_name", "a/b"),
    ("label_prefix", "x/y"),
    ("label_prefix", "Upper.io"),
    ("label_prefix", ""),
    ("log_format", "xml"),
    ("http_addr", "nowhere"),
    ("http_addr", "127.0.0.1:70000"),
    ("handler_socket", "/tmp/" + "s" * 200),
    ("handler_socket", ""),
    ("to_serf", "maybe"),
    ("to_k8s", "2"),
    ("resync", "0"),
    ("resync", "nan"),
    ("resync", "inf"),
    ("resync", "-5"),
    ("resync", "1e9"),
    ("resync", "soon"),
    ("debounce", "-1"),
    ("debounce", "nan"),
    ("max_wait", "0"),
    ("max_wait", "nan"),
    ("failure_hold", "-1"),
    ("failure_hold", "inf"),
    ("tag_limit", "-1"),
    ("tag_limit", "0"),
    ("tag_limit", "100000"),
    ("tag_limit", "1.5"),
    ("tag_allow", "("),
    ("tag_allow", "[a-"),
    ("replicas", "0"),
    ("replicas", "-3"),
    ("replicas", "two"),
    ("publish_default", "perhaps"),
    ("namespaces", "Kube_System"),
    ("exclude_namespaces", "UPPER"),
    ("selector", "a=b=c"),
    ("selector", "a in (b)"),
    ("cloud_name", "Guifi Net"),
    ("cloud_name", "a.b"),
    ("agent_users", "Serf User"),
    ("agent_users", "a/b"),
    ("import_services", "perhaps"),
    ("import_type", "(x"),
    ("import_cidr", "10.0.0.0/33"),
    ("import_cidr", "10.0.0.0/8,nonsense"),
    ("import_namespace", "Cloudy_NS"),
]
_CHECKED = {name for name, _ in BAD} | {"rpc_auth", "verbose"}  # tested below / a count


def test_every_setting_has_a_bad_case_and_a_documented_rule() -> None:
    names = {f.name for f in dataclasses.fields(Settings)}
    assert names <= _CHECKED
    assert names - {"verbose"} == set(config_rules.RULE_TEXT)


def _file_line(name: str, raw: str) -> str:
    return f"{config.ENV_NAMES[name]}={raw!r}\n".replace("\\x01", "\x01")


@pytest.mark.parametrize(("name", "raw"), BAD, ids=[f"{n}={v[:12]!r}" for n, v in BAD])
def test_bad_value_in_the_file_is_refused_at_start(
    runner: CliRunner, tmp_path: Path, name: str, raw: str
) -> None:
    assert_refused(invoke(runner, tmp_path, ["run"], file=_file_line(name, raw)), name)


# Booleans come from click on the command line and in the environment (click refuses a
# bad one itself, with exit 2); the rest pass through our rules from there too.
_TYPED_BY_CLICK = {"log_format", "to_serf", "to_k8s", "publish_default", "import_services"}
_ENV_CASES = [(n, v) for n, v in BAD if n not in _TYPED_BY_CLICK and v]


@pytest.mark.parametrize(
    ("name", "raw"), _ENV_CASES, ids=[f"{n}={v[:12]!r}" for n, v in _ENV_CASES]
)
def test_bad_value_in_the_environment_is_refused_at_start(
    runner: CliRunner, tmp_path: Path, name: str, raw: str
) -> None:
    result = invoke(runner, tmp_path, ["run"], env={config.ENV_NAMES[name]: raw})
    if result.exit_code == 2 and "Invalid value" in result.stderr:
        # click's int/float parse refuses these before our rules see them.
        assert name in {"tag_limit", "replicas", "resync", "debounce", "max_wait", "failure_hold"}
        assert Recorder.seen == []
        return
    assert_refused(result, name)


_FLAG_CASES = [(n, v) for n, v in _ENV_CASES if n not in ("namespaces", "exclude_namespaces")]
_GLOBAL = {"rpc_addr", "kubeconfig", "cluster", "node_name", "label_prefix", "agent_users"}


@pytest.mark.parametrize(
    ("name", "raw"), _FLAG_CASES, ids=[f"{n}={v[:12]!r}" for n, v in _FLAG_CASES]
)
def test_bad_flag_is_refused_at_start(
    runner: CliRunner, tmp_path: Path, name: str, raw: str
) -> None:
    flag = [config_rules.flag_name(name), raw]
    args = [*flag, "run"] if name in _GLOBAL else ["run", *flag]
    result = invoke(runner, tmp_path, args)
    if "Invalid value" in result.stderr:  # click could not even parse it as a number
        assert result.exit_code == 2 and Recorder.seen == []
        return
    assert_refused(result, name)


@pytest.mark.parametrize(
    "args",
    [
        ["run", "--namespace", "ok", "--namespace", "Not_OK"],
        ["run", "--exclude-namespace", "a b"],
    ],
)
def test_bad_namespace_flags(runner: CliRunner, tmp_path: Path, args: list[str]) -> None:
    name = "namespaces" if "--namespace" in args else "exclude_namespaces"
    assert_refused(invoke(runner, tmp_path, args), name)


def test_a_reload_applies_the_same_rules(runner: CliRunner, tmp_path: Path) -> None:
    result = invoke(runner, tmp_path, ["run"], file="SERFBRIDGE_REPLICAS=3\n")
    assert result.exit_code == 0, result.output
    (tmp_path / "config").write_text("SERFBRIDGE_REPLICAS=0\n")
    with pytest.raises(ConfigError, match="invalid --replicas"):
        Recorder.reloads[-1]()  # the daemon logs this and keeps its settings (SIGHUP)


def test_max_wait_shorter_than_debounce(runner: CliRunner, tmp_path: Path) -> None:
    result = invoke(runner, tmp_path, ["run", "--debounce", "3", "--max-wait", "2"])
    assert_refused(result, "max_wait")


@pytest.mark.parametrize("command", [["sync", "--dry-run"], ["status"], ["handle"]])
def test_the_other_bridge_commands_check_too(
    runner: CliRunner, tmp_path: Path, command: list[str]
) -> None:
    result = invoke(runner, tmp_path, [*command, "--replicas", "0"])
    assert_refused(result, "replicas")


def test_serf_commands_check_the_file_too(runner: CliRunner, tmp_path: Path) -> None:
    result = invoke(runner, tmp_path, ["members"], file="SERFBRIDGE_TAG_LIMIT=-1\n")
    assert_refused(result, "tag_limit")


def test_good_values_start(runner: CliRunner, tmp_path: Path) -> None:
    file = (
        "SERFBRIDGE_SELECTOR='app=web, tier!=db, !legacy'\nSERFBRIDGE_RESYNC=1\n"
        "SERFBRIDGE_TAG_LIMIT=2048\nSERFBRIDGE_NAMESPACES=default,kube-system\n"
        "SERFBRIDGE_HTTP_ADDR=[::1]:9473\nSERF_RPC_ADDR=:7373\n"
    )
    result = invoke(runner, tmp_path, ["--label-prefix", "x.example.org", "run"], file=file)
    assert result.exit_code == 0, result.output
    s = Recorder.seen[-1]
    assert (s.selector, s.tag_limit, s.http_addr) == (
        "app=web, tier!=db, !legacy",
        2048,
        "[::1]:9473",
    )


def test_the_default_node_name_is_the_lowercased_hostname(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config.socket, "gethostname", lambda: "Node-7.Example.Org")
    assert Settings().node_name == "node-7"


# --- secrets in error text -----------------------------------------------------------------

SECRET = "S3cr3tKeyZq9"


@pytest.mark.parametrize(
    "line",
    [
        f"SERF_RPC_AUTH {SECRET}",  # '=' forgotten: the whole line is no KEY=value
        f"SERF_RPC_AUTH:{SECRET}",
        f"SERF_RPC_AUT={SECRET}",  # a typo in the key
        f"{SECRET}",
        f"SERF_RPC_AUTH {SECRET}=x",
        f"SERF_RPC_AUTH='{SECRET}",  # unclosed quote
        f'SERF_RPC_AUTH="{SECRET}\x01"',  # a control character inside the key
        f"SERFBRIDGE_REPLICAS={SECRET}",  # the key on the wrong line
        f"SERFBRIDGE_RESYNC={SECRET}",
        f"SERFBRIDGE_TO_SERF={SECRET}",
        f"SERFBRIDGE_CLUSTER='{SECRET} x'",
        f"SERFBRIDGE_SELECTOR={SECRET}=a=b",
    ],
)
def test_no_error_echoes_a_value(runner: CliRunner, tmp_path: Path, line: str) -> None:
    result = invoke(runner, tmp_path, ["run"], file=f"# site\n{line}\n")
    assert result.exit_code == 2, result.output
    assert SECRET not in result.output
    assert len(result.stderr.strip().splitlines()) == 1
    if "config:" in result.stderr:
        assert "config:2:" in result.stderr  # file and line number instead


def test_an_unknown_key_is_named_only_when_it_looks_like_one(tmp_path: Path) -> None:
    path = tmp_path / "c"
    path.write_text("SERFBRIDGE_BOGUS=1\n")
    with pytest.raises(ConfigError, match="unknown key 'SERFBRIDGE_BOGUS'"):
        config.read_config_file(str(path))


# --- the key is stripped, wherever it comes from ------------------------------------------


def test_the_key_is_stripped_from_every_source(runner: CliRunner, tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("k3y\n")  # what `kubectl create secret --from-file` stores
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "serf-rpc-auth").write_text("\tk3y \n")
    cases: list[tuple[list[str], str, dict[str, str]]] = [
        (["--rpc-auth", " k3y\n", "run"], "", {}),
        (["run"], "", {"SERF_RPC_AUTH": "k3y\n"}),
        (["run"], "SERF_RPC_AUTH='k3y  '\n", {}),
        (["--rpc-auth-file", str(key_file), "run"], "", {}),
        (["run"], "", {"CREDENTIALS_DIRECTORY": str(creds)}),
    ]
    for args, file, env in cases:
        result = invoke(runner, tmp_path, args, file=file, env=env)
        assert result.exit_code == 0, (args, result.output)
        assert Recorder.seen[-1].rpc_auth == "k3y", (args, file, env)
    result = invoke(runner, tmp_path, ["run"], env={"SERF_RPC_AUTH": " \n"})
    assert result.exit_code == 0 and Recorder.seen[-1].rpc_auth is None
