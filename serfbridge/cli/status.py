"""The ``status`` command: ask the running daemon's /status, else compute the plan.

What answers on the daemon's address is read bounded and checked for the shape we print,
so a squatter or a daemon of another version costs one line and exit 1, never a traceback
or an unbounded read.
"""

from __future__ import annotations

import json
import time
from typing import Any

import click

from serfbridge import config
from serfbridge.cli.base import _client, cli
from serfbridge.cli.bridge import _kube_cache, _settings, bridge_options
from serfbridge.errors import DaemonReplyError


@cli.command()
@bridge_options
@click.option(
    "--http-addr",
    envvar="SERFBRIDGE_HTTP_ADDR",
    show_envvar=True,
    help="Where the daemon serves /status [default: 127.0.0.1:9473].",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def status(ctx: click.Context, /, as_json: bool, **_: object) -> None:
    """What this node publishes, the budget used, what was left out, last sync, errors.

    Asks the running daemon (its /status); without one, computes the plan (dry run).
    Env: SERFBRIDGE_HTTP_ADDR, SERF_RPC_ADDR, SERF_RPC_AUTH, KUBECONFIG.
    """
    s = _settings(ctx)
    report = _daemon_status(s.http_addr)
    if report is None:
        report = _computed_status(ctx, s)
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True))
        return
    click.echo(
        f"node {report.get('node')} (cluster {report.get('cluster')}), source: "
        f"{report.get('source')}"
    )
    if "ready" in report:
        click.echo(f"ready: {report['ready']} ({report.get('reason')})")
    for direction, when in sorted(dict(report.get("last_sync") or {}).items()):
        click.echo(
            f"last {direction} sync: {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(when))}"
        )
    click.echo(f"budget: {report.get('budget_used', '?')}/{report.get('tag_limit')} bytes")
    for entry in report.get("publishes") or []:
        click.echo(f"publishes: {entry['s']} {entry['p']} {entry['d']} ({entry['t']})")
    for left in report.get("left_out") or []:
        click.echo(
            f"left out: {left['namespace']}/{left['service']} port {left['port']}: {left['reason']}"
        )
    for direction, error in sorted(dict(report.get("errors") or {}).items()):
        click.echo(f"error ({direction}): {error}")
    imports = report.get("imports")
    if isinstance(imports, dict):
        click.echo(
            f"imports: {imports.get('services', 0)} service(s), "
            f"{imports.get('endpoint_slices', 0)} endpoint slice(s), writer "
            f"{imports.get('writer') or 'none'}, skipped {imports.get('skipped') or {}}, "
            f"refused {imports.get('refused') or []}"
        )


#: Largest /status we read from a daemon: its report is a few KiB even at 300 Services.
MAX_STATUS_BYTES = 4 * 1024 * 1024
#: /status fields and the JSON types ``status`` prints them as.
_STATUS_SHAPE: dict[str, tuple[type, ...]] = {
    "node": (str,),
    "cluster": (str,),
    "ready": (bool,),
    "reason": (str,),
    "last_sync": (dict,),
    "budget_used": (int,),
    "tag_limit": (int,),
    "publishes": (list,),
    "left_out": (list,),
    "errors": (dict,),
    "imports": (dict,),
}
_ROW_KEYS = {"publishes": ("s", "p", "d", "t"), "left_out": ("namespace", "service", "port")}
# No real Unix time reaches 1e11 s (the year 5138): a larger one is garbage, not a date.
_LAST_SYNC_BOUND = 1e11


def _daemon_status(http_addr: str) -> dict[str, Any] | None:
    """The running daemon's /status; None when nothing answers there (then we compute).

    Read bounded and checked for the shape we print: anything else listening on the
    port (or a daemon of another version) gets one line and exit 1, not a traceback.
    """
    import urllib.error
    import urllib.request  # slow to import; only `status` needs it

    try:
        with urllib.request.urlopen(f"http://{http_addr}/status", timeout=2) as reply:
            body = reply.read(MAX_STATUS_BYTES + 1)
    except urllib.error.HTTPError as exc:
        raise DaemonReplyError(
            f"daemon at {http_addr} answered /status with HTTP {exc.code}"
        ) from None
    except (OSError, ValueError):
        return None  # nothing listens (or not HTTP at all): compute the status ourselves
    if len(body) > MAX_STATUS_BYTES:
        raise DaemonReplyError(f"/status from {http_addr} is over {MAX_STATUS_BYTES} bytes")
    try:
        report = json.loads(body)
    except ValueError:
        raise DaemonReplyError(f"/status from {http_addr} is not JSON") from None
    problem = _status_problem(report)
    if problem:
        raise DaemonReplyError(f"/status from {http_addr} is malformed: {problem}")
    return {**report, "source": f"daemon at {http_addr}"}


def _status_problem(report: object) -> str | None:
    if not isinstance(report, dict):
        return "not a JSON object"
    for key, types in _STATUS_SHAPE.items():
        value = report.get(key)
        if value is not None and not isinstance(value, types):
            return f"{key} is not a {types[0].__name__}"
    for key, needed in _ROW_KEYS.items():
        for row in report.get(key) or []:
            if not isinstance(row, dict) or any(k not in row for k in needed):
                return f"an entry of {key} lacks {', '.join(needed)}"
    for when in dict(report.get("last_sync") or {}).values():
        if (
            isinstance(when, bool)
            or not isinstance(when, int | float)
            or not 0 <= when < _LAST_SYNC_BOUND
        ):
            return "last_sync holds a time that is not a number of seconds"
    return None


def _computed_status(ctx: click.Context, s: config.Settings) -> dict[str, Any]:
    # The planners load only for the commands that plan.
    from serfbridge import bridge
    from serfbridge.passes import import_status

    client, cache = _kube_cache(s, wait=30)
    try:
        view = bridge.read_kube(cache)
        with _client(ctx) as serf:
            serf_view = bridge.read_serf(serf)
            plan, _ = bridge.publish_pass(
                serf, serf_view, kube_view=view, kube=None, settings=s, dry_run=True
            )
        imports = (
            bridge.plan_import_pass(serf_view, view, settings=s) if s.import_services else None
        )
    finally:
        cache.stop(timeout=2)
        client.close()
    extra = {} if imports is None else {"imports": import_status(imports)}
    return {
        **extra,
        "node": s.node_name,
        "cluster": s.cluster,
        "tag_limit": s.tag_limit,
        "source": "computed now (no daemon answered)",
        "budget_used": plan.budget_used,
        "publishes": [e.to_wire() for e in plan.entries],
        "left_out": [vars(lo) for lo in plan.left_out],
    }
