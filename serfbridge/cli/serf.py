"""Serf commands: members, tags, event, query, stream, monitor (thin wrappers on the client)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import click

from serfbridge.cli.base import _client, check_seconds, cli, parse_pairs
from serfbridge.errors import UsageError
from serfbridge.member_events import MEMBER_EVENTS
from serfbridge.printable import escape_controls, valid_text
from serfbridge.re2syntax import check_go_regex
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

#: A query longer than this is a typo (Serf's own default is a few seconds).
MAX_QUERY_TIMEOUT = 3600.0

# --- members ---------------------------------------------------------------------------


def format_member_line(m: Member, width: int) -> str:
    """One table row; names, statuses and tags come from gossip, so controls are escaped."""
    tags = ",".join(f"{k}={v}" for k, v in sorted(m.tags.items()))
    name, status, tags = (escape_controls(t) for t in (m.name, m.status, tags))
    return f"{name:<{width}}  {m.addr}:{m.port:<6}  {status:<7}  {tags}".rstrip()


def _valid_json(value: object) -> object:
    """Undecodable bytes from gossip as U+FFFD, like Go's encoding/json in `serf members`:
    a lone surrogate escape would make strict parsers reject the whole output."""
    if isinstance(value, str):
        return valid_text(value)
    if isinstance(value, dict):
        return {valid_text(str(k)): _valid_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_valid_json(v) for v in value]
    return value


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
    ctx: click.Context, status: str, *, name: str, tag_filters: tuple[str, ...], as_json: bool
) -> None:
    """List the members of the gossip cluster, like `serf members`.

    Filters are Go (RE2) regexes, anchored as in `serf members`; one Go would refuse is
    an error (exit 2) before anything is sent. Env: SERF_RPC_ADDR, SERF_RPC_AUTH.
    """
    tags = parse_pairs(tag_filters, "--tag")
    for key, pattern in tags.items():
        check_go_regex(pattern, f"--tag {key}", anchored=True)
    check_go_regex(status, "--status", anchored=True)
    check_go_regex(name, "--name", anchored=True)
    with _client(ctx) as client:
        if tags or status or name:
            found = client.members_filtered(tags=tags, status=status, name=name)
        else:
            found = client.members()
    if as_json:
        members_json = [_valid_json(m.to_json()) for m in found]
        click.echo(json.dumps({"members": members_json}, indent=2))
        return
    width = max((len(escape_controls(m.name)) for m in found), default=0)
    for m in found:
        click.echo(format_member_line(m, width))


# --- tags ------------------------------------------------------------------------------


@cli.group()
def tags() -> None:
    """Change this agent's tags (merge semantics; oversized sets are refused before sending).

    Env: SERF_RPC_ADDR, SERF_RPC_AUTH.
    """


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
def event(ctx: click.Context, name: str, *, payload: str, coalesce: bool) -> None:
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
    help="Only ask nodes whose tag matches this Go (RE2) regex (unanchored, as Serf does).",
)
@click.option("--ack", is_flag=True, help="Ask nodes to acknowledge receipt.")
@click.option(
    "--timeout",
    type=float,
    default=0.0,
    help=f"Seconds, at most {MAX_QUERY_TIMEOUT:g}; 0 = the agent's default.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per record.")
@click.pass_context
def query(
    ctx: click.Context,
    name: str,
    *,
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
        check_go_regex(pattern, f"--tag {key}", anchored=False)  # nodes match it unanchored
    check_seconds(timeout, "--timeout", maximum=MAX_QUERY_TIMEOUT)
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


def _follow(items: Iterator[StreamItem], count: int, *, as_json: bool) -> None:
    seen = 0
    for item in items:
        if isinstance(item, Reconnected):
            click.echo(format_item(item, False), err=True)
            continue
        click.echo(format_item(item, as_json))
        seen += 1
        if count and seen >= count:
            return


def check_event_filter(text: str) -> str:
    """The agent's own filter rule (reference/serf-rpc.md §4), checked before sending:
    comma-separated ``*``, member event types, ``user[:NAME]``, ``query[:NAME]``; "" is ``*``.
    """
    for entry in text.split(",") if text else ():
        kind, _, _ = entry.partition(":")
        if not (entry in ("*", *MEMBER_EVENTS) or kind in ("user", "query")):
            raise UsageError(
                f"stream filter: {entry!r} is not *, a member event type, user[:NAME] or "
                "query[:NAME] (entries are comma-separated, without spaces)"
            )
    return text


@cli.command()
@click.argument("event_filter", default="*", metavar="[FILTER]")
@click.option(
    "--count",
    type=click.IntRange(min=0),
    default=0,
    help="Exit after this many events (0 = never).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per event.")
@click.pass_context
def stream(ctx: click.Context, event_filter: str, *, count: int, as_json: bool) -> None:
    """Follow events: FILTER is Serf's list, e.g. member-join,user:deploy (default *).

    Env: SERF_RPC_ADDR, SERF_RPC_AUTH.
    """
    check_event_filter(event_filter)
    with _client(ctx) as client, client.stream(event_filter) as events:
        _follow(events, count, as_json=as_json)


@cli.command()
@click.option(
    "--log-level",
    default="INFO",
    show_default=True,
    type=click.Choice(["TRACE", "DEBUG", "INFO", "WARN", "ERR"], case_sensitive=False),
)
@click.option(
    "--count", type=click.IntRange(min=0), default=0, help="Exit after this many lines (0 = never)."
)
@click.pass_context
def monitor(ctx: click.Context, log_level: str, *, count: int) -> None:
    """Follow the agent's log. Env: SERF_RPC_ADDR, SERF_RPC_AUTH."""
    with _client(ctx) as client, client.monitor(log_level.upper()) as lines:
        _follow(lines, count, as_json=False)
