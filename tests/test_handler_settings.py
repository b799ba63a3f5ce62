"""The standalone handler builds its settings from the environment without the CLI
(``standalone.settings_from_env``): it must agree with what ``serfbridge handle``
computes through click from the same environment and config file."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from serfbridge import config, standalone
from serfbridge.cli import cli
from serfbridge.errors import ConfigError

OTHER_VARS = ("SERFBRIDGE_CONFIG", "SERFBRIDGE_RPC_AUTH_FILE", "CREDENTIALS_DIRECTORY")


@pytest.fixture
def clean_env(monkeypatch):
    for var in (*config.ENV_NAMES.values(), *OTHER_VARS):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def settings_of_the_cli(env: dict[str, str], monkeypatch) -> config.Settings:
    seen: list[config.Settings] = []
    monkeypatch.setattr(
        standalone, "handle_event", lambda event, members, *, settings: seen.append(settings)
    )
    result = CliRunner().invoke(cli, ["handle"], env=env, input=b"", catch_exceptions=False)
    assert result.exit_code == 0, result.output
    [settings] = seen
    return settings


@pytest.mark.parametrize(
    "env",
    [
        pytest.param({}, id="defaults"),
        pytest.param(
            {"SERFBRIDGE_NODE_NAME": "n7", "SERFBRIDGE_CLUSTER": "c2", "SERF_RPC_ADDR": "[::1]:7"},
            id="names-and-address",
        ),
        pytest.param({"SERFBRIDGE_NAMESPACES": "a b  c"}, id="repeatable-split-on-spaces"),
        pytest.param({"SERFBRIDGE_PUBLISH_DEFAULT": "off"}, id="boolean-off"),
        pytest.param({"SERFBRIDGE_PUBLISH_DEFAULT": "y"}, id="boolean-click-word"),
        pytest.param({"SERFBRIDGE_TAG_LIMIT": "2048", "SERFBRIDGE_REPLICAS": "4"}, id="numbers"),
        pytest.param(
            {"SERFBRIDGE_TO_SERF": "off", "SERFBRIDGE_RESYNC": "x", "SERFBRIDGE_FAILURE_HOLD": "1"},
            id="not-handles-options-are-ignored",
        ),
        pytest.param({"KUBECONFIG": "", "SERFBRIDGE_TAG_ALLOW": ""}, id="empty-is-unset"),
        pytest.param({"SERF_RPC_AUTH": "k3y"}, id="auth-from-env"),
        pytest.param({"SERFBRIDGE_RPC_AUTH_FILE": "{tmp}/key"}, id="auth-from-file"),
        pytest.param({"CREDENTIALS_DIRECTORY": "{tmp}"}, id="auth-from-systemd-credentials"),
        pytest.param({"SERFBRIDGE_CONFIG": "{tmp}/config"}, id="config-file"),
        pytest.param(
            {"SERFBRIDGE_CONFIG": "{tmp}/config", "SERFBRIDGE_REPLICAS": "5"},
            id="env-over-config-file",
        ),
        pytest.param(
            {"SERFBRIDGE_HANDLER_SOCKET": "{tmp}/h.sock", "SERFBRIDGE_AGENT_USER": "serf"},
            id="socket-and-agent-user",
        ),
    ],
)
def test_the_standalone_settings_are_the_cli_settings(tmp_path, clean_env, env) -> None:
    (tmp_path / "key").write_text("from-file\n")
    (tmp_path / "serf-rpc-auth").write_text("from-credentials\n")
    (tmp_path / "config").write_text("SERFBRIDGE_REPLICAS=3\nSERFBRIDGE_CLOUD_NAME=mesh\n")
    env = {"SERFBRIDGE_CONFIG": "/dev/null"} | {k: v.format(tmp=tmp_path) for k, v in env.items()}
    for var, value in env.items():
        clean_env.setenv(var, value)
    mine = standalone.settings_from_env(env)
    assert mine == settings_of_the_cli(env, clean_env)


def test_a_bad_value_is_a_config_error(clean_env) -> None:
    with pytest.raises(ConfigError):
        standalone.settings_from_env(
            {"SERFBRIDGE_CONFIG": "/dev/null", "SERFBRIDGE_TAG_LIMIT": "x"}
        )
