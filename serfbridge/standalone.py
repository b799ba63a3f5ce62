"""A Serf event with no daemon: hand it over if one listens, else one to-k8s pass here.

The one function both entries call: ``serfbridge handle`` (the CLI command, with
settings from click) calls ``handle_event``; ``serfbridge-handle`` (``handler.main``),
which has already tried the hand-over on its fast path, calls ``main`` with its
environment, and the settings are built here from the same sources the CLI reads
(flags aside): the environment, the config file, systemd credentials. The pass is the
daemon's (``bridge``), with a one-shot failure hold: nothing comes back to re-check.

Callers: ``cli.bridge`` (``handle``) and ``handler.main``. Must not: import the CLI or
the handler (it calls us: events come in as plain names), or hand an event over twice.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping

from serfbridge import bridge, config, handoff, localpeers, logs
from serfbridge.errors import SerfBridgeError
from serfbridge.failure_hold import FailureHold
from serfbridge.member_events import MEMBER_EVENTS
from serfbridge.rpc.client import SerfClient

log = logging.getLogger("serfbridge")


def handle_event(event: str, members: tuple[str, ...], *, settings: config.Settings) -> None:
    """Hand a member event (``SERF_EVENT``, the names on stdin) to a running daemon, else
    run one to-k8s pass here."""
    if event not in MEMBER_EVENTS:
        return  # user events and queries do not change labels
    if handoff.hand_over(settings.handler_socket, event, members=members):
        return
    run_pass(event, settings)


def run_pass(event: str, settings: config.Settings) -> int:
    """One to-k8s pass, as the daemon would run it; returns the PATCHes sent."""
    from serfbridge import kube  # slow to import: only once no daemon took the event

    client = kube.load_client(settings.kubeconfig)
    try:
        nodes = client.list_nodes()
        with serf_client(settings) as serf:
            _plan, writes = bridge.label_pass(
                bridge.read_serf(serf),
                bridge.KubeView(nodes=nodes),
                kube=client,
                settings=settings,
                hold=FailureHold.one_shot(time.monotonic()),
            )
        log.info("handled %s standalone: %d patch(es)", event, writes)
    finally:
        client.close()
    return writes


def serf_client(settings: config.Settings) -> SerfClient:
    return SerfClient(
        settings.rpc_addr,
        auth_key=settings.rpc_auth,
        tag_limit=settings.tag_limit,
        trusted_uids=localpeers.trusted_uids(settings.agent_users),
    )


def settings_from_env(env: Mapping[str, str]) -> config.Settings:
    """Settings as ``serfbridge handle`` reads them with no flags: env, file, defaults."""
    explicit: dict[str, object] = {
        name: _env_value(name, env[config.ENV_NAMES[name]])
        for name in HANDLE_SETTINGS
        if env.get(config.ENV_NAMES[name])  # click, too, takes an empty variable as unset
    }
    auth_file = env.get("SERFBRIDGE_RPC_AUTH_FILE")
    if auth_file:
        explicit["rpc_auth"] = config.read_secret_file(auth_file, "--rpc-auth-file")
    elif "rpc_auth" not in explicit:
        explicit["rpc_auth"] = config.credential_auth(env)
    path = env.get("SERFBRIDGE_CONFIG") or config.DEFAULT_CONFIG
    return config.merge(explicit, config.read_config_file(path))


#: The settings whose variables ``serfbridge handle`` reads (its own options and the
#: global ones); the others (``--resync``, ``--to-serf``...) are the daemon's or sync's.
HANDLE_SETTINGS = (
    "rpc_addr",
    "rpc_auth",
    "kubeconfig",
    "cluster",
    "node_name",
    "label_prefix",
    "log_format",
    "agent_users",
    "handler_socket",
    "tag_allow",
    "tag_limit",
    "replicas",
    "publish_default",
    "namespaces",
    "exclude_namespaces",
    "selector",
    "cloud_name",
)
#: The words click takes for true and false in a flag's environment variable.
_CLICK_TRUE = ("1", "true", "t", "yes", "y", "on")
_CLICK_FALSE = ("0", "false", "f", "no", "n", "off")


def _env_value(name: str, raw: str) -> object:
    """One variable as the CLI's option would parse it (click splits a repeatable option's
    variable on whitespace only; the config file also splits on commas)."""
    default = getattr(_DEFAULTS, name)
    if isinstance(default, frozenset):
        return frozenset(raw.split())
    if isinstance(default, bool) and raw.strip().lower() in _CLICK_TRUE + _CLICK_FALSE:
        return raw.strip().lower() in _CLICK_TRUE
    return config.convert(name, raw)


_DEFAULTS = config.Settings(node_name="x")


def main(event: str, env: Mapping[str, str]) -> None:
    """``serfbridge-handle`` after its hand-over found no daemon: exit 2 on bad input, 1
    on a runtime failure, with one line on stderr (as the CLI would)."""
    try:
        settings = settings_from_env(env)
        logs.configure(settings.log_format, 0)
        run_pass(event, settings)
    except SerfBridgeError as exc:
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(2 if exc.bad_input else 1)
