"""The ``serfbridge`` command group: global options, settings layering, error mapping.

Thin by design (like kopf's CLI): each command turns its options into arguments for the
client or a planner, and prints the result. Exit codes: 0 ok, 1 runtime failure, 2 bad
input; errors are one line on stderr, with a traceback only under ``-v``. The RPC auth
key is read from a flag, ``SERF_RPC_AUTH`` or a file, and never printed or logged.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import click
from click.core import ParameterSource

from serfbridge import __version__, config, localpeers, logs
from serfbridge.errors import SerfBridgeError, UsageError
from serfbridge.rpc.client import DEFAULT_ADDR, SerfClient

log = logging.getLogger("serfbridge")


@dataclass
class CliState:
    """Global options as given (flags or env); the config file is merged in on demand."""

    explicit: dict[str, object]
    config_path: str | None
    verbose: int

    def settings(self, command_explicit: dict[str, object] | None = None) -> config.Settings:
        """Flags, then env, then the config file, then defaults. Re-read on every call."""
        values = {**self.explicit, **(command_explicit or {}), "verbose": self.verbose}
        return config.merge(values, config.read_config_file(self.config_path))

    def client(self) -> SerfClient:
        s = self.settings()
        return SerfClient(
            s.rpc_addr,
            auth_key=s.rpc_auth,
            tag_limit=s.tag_limit,
            trusted_uids=localpeers.trusted_uids(s.agent_users),
        )


_SETTING_NAMES = {f.name for f in dataclasses.fields(config.Settings)}
_PARAM_TO_SETTING = {"cluster_name": "cluster"}
#: Settings that are sets: click's tuples of repeated options become frozensets.
_SET_SETTINGS = {f.name for f in dataclasses.fields(config.Settings) if f.type == "frozenset[str]"}


def explicit_values(ctx: click.Context) -> dict[str, object]:
    """Parameters given on the command line or in the environment, by setting name."""
    result: dict[str, object] = {}
    for name, value in ctx.params.items():
        source = ctx.get_parameter_source(name)
        setting = _PARAM_TO_SETTING.get(name, name)
        if setting in _SETTING_NAMES and source in (
            ParameterSource.COMMANDLINE,
            ParameterSource.ENVIRONMENT,
        ):
            result[setting] = frozenset(value) if setting in _SET_SETTINGS else value
    return result


def _read_auth(rpc_auth: str | None, rpc_auth_file: str | None) -> str | None:
    if rpc_auth_file:
        return config.read_secret_file(rpc_auth_file, "--rpc-auth-file")
    return rpc_auth or config.credential_auth()


def check_seconds(value: float, what: str, *, maximum: float) -> float:
    """A command's own duration option (not a setting): finite, 0 to ``maximum``."""
    if not math.isfinite(value) or not 0 <= value <= maximum:
        raise UsageError(f"{what} must be from 0 to {maximum:g} seconds, got {value:g}")
    return value


def parse_pairs(pairs: tuple[str, ...], what: str) -> dict[str, str]:
    """``k=v`` arguments → dict; split on the first ``=`` like the serf CLI."""
    result: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"{what} must be key=value, got {pair!r}")
        result[key] = value
    return result


class _Group(click.Group):
    """Runs commands with our error handling: one line, exit 1 or 2."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except SerfBridgeError as exc:
            verbose = ctx.obj.verbose if isinstance(ctx.obj, CliState) else 0
            if verbose:
                log.exception("failed")
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2 if exc.bad_input else 1)
        except KeyboardInterrupt:
            ctx.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="serfbridge")
@click.option(
    "--rpc-addr",
    envvar="SERF_RPC_ADDR",
    default=None,
    show_envvar=True,
    help=f"Serf agent RPC address [default: {DEFAULT_ADDR}].",
)
@click.option(
    "--rpc-auth",
    envvar="SERF_RPC_AUTH",
    default=None,
    show_envvar=True,
    help="Serf RPC auth key (prefer --rpc-auth-file: flags show in `ps`).",
)
@click.option(
    "--rpc-auth-file",
    envvar="SERFBRIDGE_RPC_AUTH_FILE",
    default=None,
    show_envvar=True,
    type=click.Path(dir_okay=False),
    help="Read the Serf RPC auth key from this file (systemd: LoadCredential="
    "serf-rpc-auth:... is read automatically).",
)
@click.option(
    "--kubeconfig",
    envvar="KUBECONFIG",
    default=None,
    show_envvar=True,
    help="Kubeconfig file [default: in-cluster inside a pod, else ~/.kube/config].",
)
@click.option(
    "--cluster-name",
    envvar="SERFBRIDGE_CLUSTER",
    default=None,
    show_envvar=True,
    help="This Kubernetes cluster's name in the gossip [default: default].",
)
@click.option(
    "--node-name",
    envvar="SERFBRIDGE_NODE_NAME",
    default=None,
    show_envvar=True,
    help="This host's Kubernetes Node name [default: the hostname].",
)
@click.option(
    "--label-prefix",
    envvar="SERFBRIDGE_LABEL_PREFIX",
    default=None,
    show_envvar=True,
    help="Prefix of every label and annotation [default: serfbridge.io].",
)
@click.option(
    "--log-format",
    envvar="SERFBRIDGE_LOG_FORMAT",
    default=None,
    show_envvar=True,
    type=click.Choice(["text", "json"]),
    help="Log lines as text or JSON.",
)
@click.option(
    "--agent-user",
    "agent_users",
    envvar="SERFBRIDGE_AGENT_USER",
    show_envvar=True,
    multiple=True,
    help="A user the local serf agent runs as, besides root and our own user (repeatable): "
    "only these may use the handler socket or own the agent's RPC port.",
)
@click.option(
    "--config",
    "config_path",
    envvar="SERFBRIDGE_CONFIG",
    show_envvar=True,
    default=config.DEFAULT_CONFIG,
    show_default=True,
    help="Env-style config file (KEY=value, same keys as the env variables).",
)
@click.option("-v", "--verbose", count=True, help="More logging; tracebacks on errors.")
@click.pass_context
def cli(
    ctx: click.Context,
    /,
    rpc_auth: str | None,
    *,
    rpc_auth_file: str | None,
    config_path: str,
    verbose: int,
    **_: object,
) -> None:
    """Keep a Serf gossip cluster and a Kubernetes cluster in sync."""
    explicit = explicit_values(ctx)
    auth = _read_auth(rpc_auth, rpc_auth_file)
    if auth is not None:
        explicit["rpc_auth"] = auth
    state = CliState(explicit, config_path, verbose)
    ctx.obj = state
    if ctx.invoked_subcommand not in ("run",):
        logs.configure(state.settings().log_format if config_path else "text", verbose)


@contextmanager
def _client(ctx: click.Context) -> Iterator[SerfClient]:
    state: CliState = ctx.find_object(CliState)  # type: ignore[assignment]
    client = state.client()
    try:
        yield client
    finally:
        client.close()
