"""The ``serfbridge`` command line: parse, call one function, print, map errors to exit codes.

Thin by design (like kopf's CLI): each command turns its options into arguments for the
client or a planner, and prints the result. Exit codes: 0 ok, 1 runtime failure, 2 bad
input; errors are one line on stderr, with a traceback only under ``-v``. The RPC auth
key is read from a flag, ``SERF_RPC_AUTH`` or a file, and never printed or logged.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import click
from click.core import ParameterSource

from serfbridge import __version__, cloudy, config, local_services, logs
from serfbridge.errors import SerfBridgeError, UsageError
from serfbridge.rpc.client import DEFAULT_ADDR, SerfClient, check_regex
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
        return SerfClient(s.rpc_addr, auth_key=s.rpc_auth, tag_limit=s.tag_limit)


_SETTING_NAMES = {f.name for f in dataclasses.fields(config.Settings)}
_PARAM_TO_SETTING = {"cluster_name": "cluster"}


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
            result[setting] = frozenset(value) if isinstance(value, tuple) else value
    return result


def _read_auth(rpc_auth: str | None, rpc_auth_file: str | None) -> str | None:
    if rpc_auth_file:
        try:
            return Path(rpc_auth_file).read_text().strip() or None
        except OSError as exc:
            raise UsageError(
                f"cannot read --rpc-auth-file {rpc_auth_file}: {exc.strerror}"
            ) from exc
    return rpc_auth or config.credential_auth()


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


# --- members ---------------------------------------------------------------------------


def format_member_line(m: Member, width: int) -> str:
    tags = ",".join(f"{k}={v}" for k, v in sorted(m.tags.items()))
    return f"{m.name:<{width}}  {m.addr}:{m.port:<6}  {m.status:<7}  {tags}".rstrip()


@cli.command()
@click.option("--status", default="", help="Only members whose status matches this regex.")
@click.option("--name", default="", help="Only members whose name matches this regex.")
@click.option(
    "--tag",
    "tag_filters",
    multiple=True,
    metavar="KEY=REGEX",
    help="Only members with a tag matching this regex (repeatable).",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print JSON like `serf members -format json`."
)
@click.pass_context
def members(
    ctx: click.Context, status: str, name: str, tag_filters: tuple[str, ...], as_json: bool
) -> None:
    """List the members of the gossip cluster, like `serf members`.

    Filters are anchored regexes, as in `serf members`. Env: SERF_RPC_ADDR, SERF_RPC_AUTH.
    """
    tags = parse_pairs(tag_filters, "--tag")
    for key, pattern in tags.items():
        check_regex(pattern, f"--tag {key}")
    check_regex(status, "--status")
    check_regex(name, "--name")
    with _client(ctx) as client:
        if tags or status or name:
            found = client.members_filtered(tags=tags, status=status, name=name)
        else:
            found = client.members()
    if as_json:
        click.echo(json.dumps({"members": [m.to_json() for m in found]}, indent=2))
        return
    width = max((len(m.name) for m in found), default=0)
    for m in found:
        click.echo(format_member_line(m, width))


# --- tags ------------------------------------------------------------------------------


@cli.group()
def tags() -> None:
    """Change this agent's tags (merge semantics; oversized sets are refused before sending)."""


@tags.command("set")
@click.argument("pairs", nargs=-1, required=True, metavar="KEY=VALUE...")
@click.pass_context
def tags_set(ctx: click.Context, pairs: tuple[str, ...]) -> None:
    """Set tags on the local agent. Env: SERF_RPC_ADDR, SERF_RPC_AUTH."""
    new = parse_pairs(pairs, "tag")
    with _client(ctx) as client:
        client.tags(new)
    click.echo(f"set {', '.join(sorted(new))}")


@tags.command("delete")
@click.argument("keys", nargs=-1, required=True)
@click.pass_context
def tags_delete(ctx: click.Context, keys: tuple[str, ...]) -> None:
    """Delete tags from the local agent. Env: SERF_RPC_ADDR, SERF_RPC_AUTH."""
    with _client(ctx) as client:
        client.tags(delete=keys)
    click.echo(f"deleted {', '.join(keys)}")


# --- events, queries, streams ----------------------------------------------------------


@cli.command()
@click.argument("name")
@click.argument("payload", default="")
@click.option("--coalesce/--no-coalesce", default=True, show_default=True)
@click.pass_context
def event(ctx: click.Context, name: str, payload: str, coalesce: bool) -> None:
    """Send a user event to the cluster. Env: SERF_RPC_ADDR, SERF_RPC_AUTH."""
    with _client(ctx) as client:
        client.event(name, payload.encode(), coalesce=coalesce)
    click.echo(f"event {name} dispatched")


@cli.command()
@click.argument("name")
@click.argument("payload", default="")
@click.option("--node", "nodes", multiple=True, help="Only ask this node (repeatable).")
@click.option(
    "--tag",
    "tag_filters",
    multiple=True,
    metavar="KEY=REGEX",
    help="Only ask nodes whose tag matches (unanchored, as Serf does).",
)
@click.option("--ack", is_flag=True, help="Ask nodes to acknowledge receipt.")
@click.option("--timeout", type=float, default=0.0, help="Seconds; 0 = the agent's default.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per record.")
@click.pass_context
def query(
    ctx: click.Context,
    name: str,
    payload: str,
    nodes: tuple[str, ...],
    tag_filters: tuple[str, ...],
    ack: bool,
    timeout: float,
    as_json: bool,
) -> None:
    """Send a query and print acks and responses. Env: SERF_RPC_ADDR, SERF_RPC_AUTH."""
    filters = parse_pairs(tag_filters, "--tag")
    for key, pattern in filters.items():
        check_regex(pattern, f"--tag {key}")
    with _client(ctx) as client:
        for record in client.query(
            name,
            payload.encode(),
            filter_nodes=nodes,
            filter_tags=filters,
            request_ack=ack,
            timeout_s=timeout,
        ):
            click.echo(format_item(record, as_json))


def _text(payload: bytes) -> str:
    return payload.decode("utf-8", "backslashreplace")


def format_item(item: StreamItem, as_json: bool) -> str:
    """One line for a stream/query/monitor item."""
    if isinstance(item, MemberEvent):
        data: dict[str, object] = {
            "event": item.event,
            "members": [m.to_json() for m in item.members],
        }
        text = f"{item.event}: " + ", ".join(f"{m.name} ({m.status})" for m in item.members)
    elif isinstance(item, UserEvent):
        data = {
            "event": "user",
            "name": item.name,
            "payload": _text(item.payload),
            "ltime": item.ltime,
            "coalesce": item.coalesce,
        }
        text = f"user: {item.name} {_text(item.payload)}".rstrip()
    elif isinstance(item, QueryEvent):
        data = {
            "event": "query",
            "id": item.id,
            "name": item.name,
            "payload": _text(item.payload),
            "ltime": item.ltime,
        }
        text = f"query: {item.name} (id {item.id}) {_text(item.payload)}".rstrip()
    elif isinstance(item, QueryRecord):
        data = {"type": item.type, "from": item.from_node, "payload": _text(item.payload)}
        text = {"ack": f"ack from {item.from_node}", "done": "done"}.get(
            item.type, f"response from {item.from_node}: {_text(item.payload)}"
        )
    elif isinstance(item, LogLine):
        data, text = {"log": item.line}, item.line
    else:
        data, text = {"event": "reconnected"}, "reconnected to the agent (events may be missed)"
    return json.dumps(data, separators=(",", ":")) if as_json else text


def _follow(items: Iterator[StreamItem], count: int, as_json: bool) -> None:
    seen = 0
    for item in items:
        if isinstance(item, Reconnected):
            click.echo(format_item(item, False), err=True)
            continue
        click.echo(format_item(item, as_json))
        seen += 1
        if count and seen >= count:
            return


@cli.command()
@click.argument("event_filter", default="*", metavar="[FILTER]")
@click.option("--count", type=int, default=0, help="Exit after this many events (0 = never).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per event.")
@click.pass_context
def stream(ctx: click.Context, event_filter: str, count: int, as_json: bool) -> None:
    """Follow events: FILTER is Serf's list, e.g. member-join,user:deploy (default *).

    Env: SERF_RPC_ADDR, SERF_RPC_AUTH.
    """
    if " " in event_filter:
        raise UsageError(f"stream filter must not contain spaces: {event_filter!r}")
    with _client(ctx) as client, client.stream(event_filter) as events:
        _follow(events, count, as_json)


@cli.command()
@click.option(
    "--log-level",
    default="INFO",
    show_default=True,
    type=click.Choice(["TRACE", "DEBUG", "INFO", "WARN", "ERR"], case_sensitive=False),
)
@click.option("--count", type=int, default=0, help="Exit after this many lines (0 = never).")
@click.pass_context
def monitor(ctx: click.Context, log_level: str, count: int) -> None:
    """Follow the agent's log. Env: SERF_RPC_ADDR, SERF_RPC_AUTH."""
    with _client(ctx) as client, client.monitor(log_level.upper()) as lines:
        _follow(lines, count, False)


# --- Cloudy services (avahi-ps compatible) ----------------------------------------------

_COLUMNS = (
    ("node_id", "NODE"),
    ("d", "DESCRIPTION"),
    ("m", "HOST"),
    ("i", "IP"),
    ("p", "PORT"),
    ("e", "MICROCLOUD"),
    ("t", "TXT"),
)


def format_services_table(rows: list[dict[str, str]]) -> list[str]:
    """Rows grouped by type, one block per type, like the Cloudy UI's tabs."""
    lines: list[str] = []
    for service_type in local_services.service_types(rows):
        block = [r for r in rows if r.get("s", "") == service_type]
        widths = [max(len(title), *(len(r.get(k, "")) for r in block)) for k, title in _COLUMNS]
        lines.append(f"{service_type or '(no type)'} ({len(block)})")
        for cells in [
            [t for _, t in _COLUMNS],
            *([r.get(k, "") for k, _ in _COLUMNS] for r in block),
        ]:
            lines.append(
                "  " + "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()
            )
    return lines


@cli.command()
@click.option("--type", "service_type", default=None, help="Only services of this type.")
@click.option(
    "--host", default=None, help="Only services on this host (node name, host name, or IP)."
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print exactly `avahi-ps search`'s one-line JSON array."
)
@click.pass_context
def services(ctx: click.Context, service_type: str | None, host: str | None, as_json: bool) -> None:
    """List the services the whole gossip publishes (alive members only).

    A member whose `services` tag cannot be decoded is skipped with a warning naming it.
    Env: SERF_RPC_ADDR, SERF_RPC_AUTH.
    """
    with _client(ctx) as client:
        found = client.members()
    rows, warnings = cloudy.decode_members(found)
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    rows = cloudy.filter_rows(rows, service_type=service_type, host=host)
    if as_json:
        click.echo(cloudy.search_json(rows))
        return
    for line in format_services_table(rows):
        click.echo(line)


@cli.command()
@click.argument("description")
@click.argument("service_type", metavar="TYPE")
@click.argument("port")
@click.argument("txt", default="")
@click.option(
    "--host",
    "host_name",
    envvar="SERFBRIDGE_PUBLISH_HOST",
    show_envvar=True,
    default=None,
    help="The `m` field [default: <hostname>.<cloud>.local].",
)
@click.option(
    "--cloud-name",
    envvar="CLOUD_NAME",
    show_envvar=True,
    default="guifi",
    show_default=True,
    help="Cloud name for the default host, as avahi-ps.",
)
@click.option(
    "--ip",
    envvar="PUBLIC_IP",
    show_envvar=True,
    default=None,
    help="The `i` field [default: this agent's member address].",
)
@click.option(
    "--microcloud",
    envvar="DEVICE_NAME",
    show_envvar=True,
    default="",
    help="The `e` field (Cloudy's microcloud).",
)
@click.pass_context
def publish(
    ctx: click.Context,
    description: str,
    service_type: str,
    port: str,
    txt: str,
    host_name: str | None,
    cloud_name: str,
    ip: str | None,
    microcloud: str,
) -> None:
    """Publish a service on the local agent, like `avahi-ps publish`.

    Upsert keyed by (TYPE, PORT); entries of others are kept. Unlike avahi-ps, a value
    that would corrupt the list, or a tag set over the budget, is refused (exit 2).
    Env: SERF_RPC_ADDR, SERF_RPC_AUTH.
    """
    host_name = host_name or f"{socket.gethostname().split('.')[0]}.{cloud_name}.local"
    entry = cloudy.make_entry(
        description=description,
        type=service_type,
        port=port,
        txt=txt,
        host=host_name,
        ip=ip or "",
        microcloud=microcloud,
    )
    with _client(ctx) as client:
        if ip is None:
            entry = dataclasses.replace(entry, ip=local_services.own_member_addr(client))
        change = local_services.publish(client, entry)
    state = "unchanged" if change.noop else "published"
    click.echo(f"{state}: {entry.type} {entry.port} {entry.description}")


@cli.command()
@click.argument("service_type", metavar="TYPE")
@click.argument("port")
@click.pass_context
def unpublish(ctx: click.Context, service_type: str, port: str) -> None:
    """Remove the local entry with TYPE and PORT, like `avahi-ps unpublish`.

    The `services` tag is deleted when no entry is left. Env: SERF_RPC_ADDR, SERF_RPC_AUTH.
    """
    with _client(ctx) as client:
        _, found = local_services.unpublish(client, service_type, port)
    click.echo(f"{'unpublished' if found else 'not published'}: {service_type} {port}")


def main() -> None:
    cli(prog_name="serfbridge")


if __name__ == "__main__":  # pragma: no cover
    main()
