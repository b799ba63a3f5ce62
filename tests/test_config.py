"""Settings: the config file, precedence flags > env > file > default, secrets, --help.

Unit tests: no agents, no apiserver. The daemon is replaced by a recorder so that
``serfbridge run`` shows the settings the real CLI resolved (and its SIGHUP reload).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import click
import pytest
from click.testing import CliRunner

from serfbridge import __version__, config, daemon, logs
from serfbridge.cli import cli
from serfbridge.config import Settings, credential_auth, merge, read_config_file
from serfbridge.errors import ConfigError
from serfbridge.rpc.client import SerfClient

ALL_ENV = [*config.ENV_NAMES.values(), "SERFBRIDGE_CONFIG", "SERFBRIDGE_RPC_AUTH_FILE"]


def write(tmp_path: Path, text: str, name: str = "config") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# --- the file -----------------------------------------------------------------------------


def test_file_takes_env_names_flag_names_comments_quotes_and_export(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "# serfbridge site settings\n"
        "\n"
        "SERF_RPC_ADDR=10.0.0.1:7373\n"
        "   export SERFBRIDGE_RESYNC=30   # seconds\n"
        "cluster-name='my-lab'\n"
        'node-name="n1"\n'
        "tag_limit=2048\n"
        "SERFBRIDGE_TO_K8S=no\n"
        "SERFBRIDGE_NAMESPACES=a, b c\n"
        "SERFBRIDGE_SELECTOR=\n",
    )
    values = read_config_file(path)
    assert values == {
        "rpc_addr": "10.0.0.1:7373",
        "resync": "30",
        "cluster": "my-lab",
        "node_name": "n1",
        "tag_limit": "2048",
        "to_k8s": "no",
        "namespaces": "a, b c",
        "selector": "",
    }
    s = merge({}, values)
    assert (s.rpc_addr, s.resync, s.cluster, s.node_name) == ("10.0.0.1:7373", 30.0, "my-lab", "n1")
    assert (s.tag_limit, s.to_k8s, s.to_serf) == (2048, False, True)
    assert s.namespaces == frozenset({"a", "b", "c"})


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("SERFBRIDGE_NO_SUCH=1", "known key"),
        ("rpc-adr=1.2.3.4:1", "known key"),
        ("just words", "KEY=value"),
        ("SERFBRIDGE_CLUSTER='unclosed", "quotation"),
    ],
)
def test_a_bad_line_is_a_config_error_with_file_and_line(
    tmp_path: Path, line: str, why: str
) -> None:
    path = write(tmp_path, f"# ok\nSERFBRIDGE_CLUSTER=lab\n{line}\n")
    with pytest.raises(ConfigError, match=why) as info:
        read_config_file(path)
    assert f"{path}:3:" in str(info.value)
    assert info.value.bad_input


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        read_config_file(str(tmp_path / "nope"))
    assert read_config_file(None) == {}
    if not Path(config.DEFAULT_CONFIG).exists():
        assert read_config_file(config.DEFAULT_CONFIG) == {}  # optional by default


@pytest.mark.parametrize(
    ("name", "raw", "expected"),
    [
        ("to_serf", "On", True),
        ("to_serf", "0", False),
        ("replicas", "3", 3),
        ("debounce", "0.5", 0.5),
        (
            "exclude_namespaces",
            "kube-system,kube-public",
            frozenset({"kube-system", "kube-public"}),
        ),
        ("cluster", " x ", " x "),
    ],
)
def test_convert(name: str, raw: str, expected: object) -> None:
    assert config.convert(name, raw) == expected


@pytest.mark.parametrize(("name", "raw"), [("to_serf", "maybe"), ("replicas", "two")])
def test_convert_rejects_and_names_the_variable(name: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=config.ENV_NAMES[name]):
        config.convert(name, raw)


def test_merge_explicit_over_file_over_default() -> None:
    s = merge({"cluster": "flag", "resync": None}, {"cluster": "file", "resync": "7"})
    assert (s.cluster, s.resync, s.debounce) == ("flag", 7.0, Settings().debounce)


# --- precedence through the real CLI ------------------------------------------------------


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    for name in [*ALL_ENV, "CREDENTIALS_DIRECTORY"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(logs, "configure", lambda *a, **k: None)  # keep pytest's handlers
    return CliRunner()


class Recorder:
    """Stands in for ``daemon.Daemon``: keeps the settings and the reload callable."""

    seen: ClassVar[list[Recorder]] = []

    def __init__(self, settings: Settings, *, reload: Any = None, kube_factory: Any = None):
        self.settings, self.reload = settings, reload
        Recorder.seen.append(self)

    def run(self) -> int:
        return 0


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Recorder]]:
    Recorder.seen = []
    monkeypatch.setattr(daemon, "Daemon", Recorder)
    yield Recorder.seen


def run_settings(
    runner: CliRunner, recorded: list[Recorder], args: list[str], env: dict[str, str] | None = None
) -> Recorder:
    result = runner.invoke(cli, args, env=env or {}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return recorded[-1]


def test_precedence_flags_env_file_default_for_run(
    runner: CliRunner, recorded: list[Recorder], tmp_path: Path
) -> None:
    path = write(
        tmp_path,
        "SERFBRIDGE_RESYNC=30\nSERFBRIDGE_DEBOUNCE=0.5\ncluster-name=file\nSERFBRIDGE_REPLICAS=4\n",
    )
    env = {"SERFBRIDGE_RESYNC": "20", "SERFBRIDGE_CLUSTER": "env"}
    r = run_settings(runner, recorded, ["--config", path, "run", "--resync", "10"], env)
    s = r.settings
    assert s.resync == 10.0  # flag over env and file
    assert s.cluster == "env"  # env over file
    assert (s.debounce, s.replicas) == (0.5, 4)  # file over default
    assert s.max_wait == Settings().max_wait  # default
    r = run_settings(runner, recorded, ["--config", path, "run"], env)
    assert r.settings.resync == 20.0
    r = run_settings(runner, recorded, ["--config", path, "run"])
    assert (r.settings.resync, r.settings.cluster) == (30.0, "file")


def test_run_reload_rereads_the_file_but_keeps_flags_and_env(
    runner: CliRunner, recorded: list[Recorder], tmp_path: Path
) -> None:
    path = write(tmp_path, "SERFBRIDGE_RESYNC=300\nSERFBRIDGE_DEBOUNCE=0.5\n")
    env = {"SERFBRIDGE_DEBOUNCE": "0.3"}
    r = run_settings(runner, recorded, ["--config", path, "run", "--max-wait", "3"], env)
    assert (r.settings.resync, r.settings.debounce, r.settings.max_wait) == (300.0, 0.3, 3.0)
    Path(path).write_text("SERFBRIDGE_RESYNC=2\nSERFBRIDGE_DEBOUNCE=9\nSERFBRIDGE_MAX_WAIT=9\n")
    new = r.reload()
    assert (new.resync, new.debounce, new.max_wait) == (2.0, 0.3, 3.0)
    Path(path).write_text("SERFBRIDGE_BOGUS=1\n")
    with pytest.raises(ConfigError, match=f"{re.escape(path)}:1"):
        r.reload()


def test_rpc_addr_precedence_shown_by_members_error(runner: CliRunner, tmp_path: Path) -> None:
    path = write(tmp_path, "SERF_RPC_ADDR=127.0.0.1:3\n")
    env = {"SERF_RPC_ADDR": "127.0.0.1:2"}
    cases = [
        (["--config", path, "--rpc-addr", "127.0.0.1:1", "members"], env, "127.0.0.1:1"),
        (["--config", path, "members"], env, "127.0.0.1:2"),
        (["--config", path, "members"], {}, "127.0.0.1:3"),
    ]
    for args, case_env, used in cases:
        result = runner.invoke(cli, args, env=case_env)
        assert result.exit_code == 1, result.output
        assert f"cannot reach the serf agent at {used}:" in result.output
        assert "Traceback" not in result.output


def test_bad_config_file_is_a_usage_error(runner: CliRunner, tmp_path: Path) -> None:
    path = write(tmp_path, "SERFBRIDGE_RESYNC=soon\n")
    result = runner.invoke(cli, ["--config", path, "run"])
    assert result.exit_code == 2
    assert "SERFBRIDGE_RESYNC" in result.output and "Traceback" not in result.output


# --- the RPC key ----------------------------------------------------------------------------


def test_credential_auth_reads_the_systemd_credential(tmp_path: Path) -> None:
    (tmp_path / "serf-rpc-auth").write_text("k3y\n")
    assert credential_auth({"CREDENTIALS_DIRECTORY": str(tmp_path)}) == "k3y"
    (tmp_path / "serf-rpc-auth").write_text("\n")  # the unit's empty SetCredential fallback
    assert credential_auth({"CREDENTIALS_DIRECTORY": str(tmp_path)}) is None
    (tmp_path / "serf-rpc-auth").unlink()
    assert credential_auth({"CREDENTIALS_DIRECTORY": str(tmp_path)}) is None
    assert credential_auth({}) is None


def test_key_sources_through_the_cli(
    runner: CliRunner, recorded: list[Recorder], tmp_path: Path
) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "serf-rpc-auth").write_text("from-credential\n")
    key_file = write(tmp_path, "from-file\n", "rpc-auth")
    env = {"CREDENTIALS_DIRECTORY": str(creds)}
    r = run_settings(runner, recorded, ["--config", write(tmp_path, ""), "run"], env)
    assert r.settings.rpc_auth == "from-credential"
    r = run_settings(
        runner,
        recorded,
        ["--config", str(tmp_path / "config"), "--rpc-auth-file", key_file, "run"],
        env,
    )
    assert r.settings.rpc_auth == "from-file"
    r = run_settings(
        runner,
        recorded,
        ["--config", str(tmp_path / "config"), "run"],
        {**env, "SERF_RPC_AUTH": "from-env"},
    )
    assert r.settings.rpc_auth == "from-env"


def test_the_key_is_not_in_repr() -> None:
    s = Settings(rpc_auth="secret-key-123", node_name="n")
    assert "secret-key-123" not in repr(s) and "secret-key-123" not in str(s)
    assert "secret-key-123" not in repr(SerfClient("127.0.0.1:1", auth_key="secret-key-123"))


# --- --help and --version -------------------------------------------------------------------


def commands(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[list[str], Any]]:
    for name, command in sorted(group.commands.items()):
        yield [*path, name], command
        if isinstance(command, click.Group):
            yield from commands(command, (*path, name))


ENV_WORD = re.compile(r"\b(SERF_[A-Z_]+|SERFBRIDGE_[A-Z_]+|KUBECONFIG)\b")


def test_every_command_help_documents_its_env_variables() -> None:
    runner = CliRunner()
    listed = list(commands(cli))
    assert {"run", "sync", "status", "handle", "members", "tags set", "tags delete"} <= {
        " ".join(p) for p, _ in listed
    }
    for path, command in [([], cli), *listed]:
        result = runner.invoke(cli, [*path, "--help"], terminal_width=200)
        assert result.exit_code == 0, (path, result.output)
        text = " ".join(result.output.split())
        assert ENV_WORD.search(text), f"serfbridge {' '.join(path)} --help names no env variable"
        for param in command.params:
            envvar = getattr(param, "envvar", None)
            if envvar:
                assert getattr(param, "show_envvar", False), (path, param.name)
                assert envvar in text, (path, param.name, envvar)


def test_the_documented_names_are_the_real_ones() -> None:
    """Names in help texts are only the settings' env names (no typos, no stale names)."""
    listed = [([], cli), *commands(cli)]
    options = {p.envvar for _, c in listed for p in c.params if getattr(p, "envvar", None)}
    real = set(ALL_ENV) | options | {"SERF_EVENT"}  # serf sets SERF_EVENT for the handler
    runner = CliRunner()
    for path, _ in listed:
        text = runner.invoke(cli, [*path, "--help"], terminal_width=200).output
        unknown = set(ENV_WORD.findall(" ".join(text.split()))) - real
        assert not unknown, (path, unknown)


def test_version() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"serfbridge, version {__version__}"


#: PlanSettings field -> the Settings field it is read from, where the names differ.
_PLAN_NAMES = {"self_node": "node_name", "prefix": "label_prefix"}


@pytest.mark.parametrize(
    "values",
    [
        pytest.param({}, id="defaults"),
        pytest.param(
            {
                "node_name": "k7",
                "cluster": "lab",
                "label_prefix": "x.example",
                "tag_allow": "role",
                "namespaces": frozenset({"a"}),
                "exclude_namespaces": frozenset({"b"}),
                "selector": "app=web",
                "publish_default": False,
                "replicas": 3,
                "cloud_name": "mesh",
                "tag_limit": 2048,
            },
            id="every-planner-setting-changed",
        ),
    ],
)
def test_the_planners_get_every_setting_they_need_from_one_mapping(values: dict) -> None:
    settings = Settings(**{"node_name": "k1", **values})
    planned = settings.plan_settings("serf-k1")
    for field in dataclasses.fields(planned):
        if field.name == "self_member":
            assert planned.self_member == "serf-k1"
            continue
        source = _PLAN_NAMES.get(field.name, field.name)
        assert getattr(planned, field.name) == getattr(settings, source), field.name
    # Both directions plan from the same value: no second settings type to drift apart.
    assert settings.label_settings("serf-k1") == settings.publish_settings("serf-k1") == planned
