"""Cloudy commands: services, publish, unpublish (avahi-ps compatible)."""

from __future__ import annotations

import dataclasses
import socket

import click

from serfbridge import cloudy, local_services
from serfbridge.cli.base import _client, cli
from serfbridge.printable import escape_controls

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
    """Rows grouped by type, one block per type, like the Cloudy UI's tabs.

    Every cell comes from gossip: control characters are escaped, so a value cannot forge
    rows or rewrite the terminal.
    """
    lines: list[str] = []
    for service_type in local_services.service_types(rows):
        block = [
            {k: escape_controls(v) for k, v in r.items()}
            for r in rows
            if r.get("s", "") == service_type
        ]
        widths = [max(len(title), *(len(r.get(k, "")) for r in block)) for k, title in _COLUMNS]
        lines.append(f"{escape_controls(service_type) or '(no type)'} ({len(block)})")
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
def services(
    ctx: click.Context, service_type: str | None, *, host: str | None, as_json: bool
) -> None:
    """List the services the whole gossip publishes (alive members only).

    A member whose `services` tag cannot be decoded is skipped with a warning naming it.
    Env: SERF_RPC_ADDR, SERF_RPC_AUTH.
    """
    with _client(ctx) as client:
        found = client.members()
    rows, warnings = cloudy.decode_members(found)
    for warning in warnings:
        click.echo(f"warning: {escape_controls(warning)}", err=True)
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
def publish(
    description: str,
    *,
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
    # The context from click's stack, not a parameter: the entry alone takes eight options.
    with _client(click.get_current_context()) as client:
        if ip is None:
            entry = dataclasses.replace(entry, ip=local_services.own_member_addr(client))
        change = local_services.publish(client, entry)
    state = "unchanged" if change.noop else "published"
    click.echo(f"{state}: {entry.type} {entry.port} {entry.description}")


@cli.command()
@click.argument("service_type", metavar="TYPE")
@click.argument("port")
@click.pass_context
def unpublish(ctx: click.Context, service_type: str, *, port: str) -> None:
    """Remove the local entry with TYPE and PORT, like `avahi-ps unpublish`.

    The `services` tag is deleted when no entry is left. Env: SERF_RPC_ADDR, SERF_RPC_AUTH.
    """
    with _client(ctx) as client:
        _, found = local_services.unpublish(client, service_type, port=port)
    click.echo(f"{'unpublished' if found else 'not published'}: {service_type} {port}")
