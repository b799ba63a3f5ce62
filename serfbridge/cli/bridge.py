"""Bridge commands: run (the daemon), sync, status and handle (the event-handler entry)."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import click

from serfbridge import config, logs
from serfbridge.cli.base import CliState, _client, check_seconds, cli, explicit_values
from serfbridge.config import split_list
from serfbridge.defaults import HANDLER_SOCKET
from serfbridge.errors import KubeUnavailable

if TYPE_CHECKING:
    from serfbridge.bridge import KubeView, PublishPass
    from serfbridge.kube import KubeClient
    from serfbridge.kube_cache import KubeCache
    from serfbridge.kube_writes import KubeObjects
    from serfbridge.plan_imports import ImportPlan
    from serfbridge.plan_labels import LabelPlan

log = logging.getLogger("serfbridge")
Decorator = Callable[[Callable[..., object]], Callable[..., object]]


# --- the bridge: run, sync, status, handle ---------------------------------------------


def bridge_options(func: Callable[..., object]) -> Callable[..., object]:
    """Options that change what the bridge plans; shared by run, sync, status and handle."""
    options: list[Decorator] = [
        click.option(
            "--tag-allow",
            envvar="SERFBRIDGE_TAG_ALLOW",
            show_envvar=True,
            help="Regex of tag keys that become labels [default: all but services].",
        ),
        click.option(
            "--tag-limit",
            envvar="SERFBRIDGE_TAG_LIMIT",
            show_envvar=True,
            type=int,
            help="Bytes a member's tags may take (2048 on Clommunity's fork) [default: 512].",
        ),
        click.option(
            "--replicas",
            envvar="SERFBRIDGE_REPLICAS",
            show_envvar=True,
            type=int,
            help="Nodes that publish each Service port [default: 2].",
        ),
        click.option(
            "--publish-default/--no-publish-default",
            envvar="SERFBRIDGE_PUBLISH_DEFAULT",
            show_envvar=True,
            default=None,
            help="Publish Services without a P/publish annotation [default: yes].",
        ),
        click.option(
            "--namespace",
            "namespaces",
            envvar="SERFBRIDGE_NAMESPACES",
            show_envvar=True,
            multiple=True,
            help="Only publish Services of these namespaces (repeatable).",
        ),
        click.option(
            "--exclude-namespace",
            "exclude_namespaces",
            envvar="SERFBRIDGE_EXCLUDE_NAMESPACES",
            show_envvar=True,
            multiple=True,
            help="Never publish Services of these namespaces (repeatable).",
        ),
        click.option(
            "--selector",
            envvar="SERFBRIDGE_SELECTOR",
            show_envvar=True,
            help="Only publish Services matching this label selector (k=v,k!=v,k,!k).",
        ),
        click.option(
            "--cloud-name",
            envvar="SERFBRIDGE_CLOUD_NAME",
            show_envvar=True,
            help="Cloud name in each entry's host, <node>.<cloud>.local [default: guifi].",
        ),
        *import_options(),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def import_options() -> list[Decorator]:
    """The imports direction's options (Cloudy services -> Services and EndpointSlices)."""
    return [
        click.option(
            "--import/--no-import",
            "import_services",
            envvar="SERFBRIDGE_IMPORT",
            show_envvar=True,
            default=None,
            help="Cloudy services -> Services and EndpointSlices in the import namespace, "
            "other clusters' Services included [default: off].",
        ),
        click.option(
            "--import-type",
            envvar="SERFBRIDGE_IMPORT_TYPE",
            show_envvar=True,
            metavar="REGEX",
            help="Import only Cloudy types this regex fully matches [default: .*].",
        ),
        click.option(
            "--import-cidr",
            envvar="SERFBRIDGE_IMPORT_CIDR",
            show_envvar=True,
            metavar="CIDR",
            callback=lambda _ctx, _param, value: None if value is None else split_list(value),
            help="Import only endpoints inside these networks (comma list) [default: any "
            "usable IP].",
        ),
        click.option(
            "--import-namespace",
            envvar="SERFBRIDGE_IMPORT_NAMESPACE",
            show_envvar=True,
            metavar="NS",
            help="Namespace of the imported Services [default: cloudy].",
        ),
    ]


def direction_options(func: Callable[..., object]) -> Callable[..., object]:
    func = click.option(
        "--to-k8s/--no-to-k8s",
        envvar="SERFBRIDGE_TO_K8S",
        show_envvar=True,
        default=None,
        help="Serf members -> Node labels [default: on].",
    )(func)
    return click.option(
        "--to-serf/--no-to-serf",
        envvar="SERFBRIDGE_TO_SERF",
        show_envvar=True,
        default=None,
        help="Services -> Serf tags [default: on].",
    )(func)


def _settings(ctx: click.Context) -> config.Settings:
    state: CliState = ctx.find_object(CliState)  # type: ignore[assignment]
    return state.settings(explicit_values(ctx))


def _kube_cache(s: config.Settings, *, wait: float | None) -> tuple[KubeClient, KubeCache]:
    """A started, watched Kubernetes cache; ``wait`` seconds for its first full list."""
    # The kubernetes import is slow: only the commands that need it pay for it.
    from serfbridge import kube
    from serfbridge.kube_cache import KubeCache

    client = kube.load_client(s.kubeconfig)
    cache = KubeCache(client).start()
    if wait is not None and not cache.wait_synced(wait):
        cache.stop(timeout=2)
        raise KubeUnavailable(f"kubernetes API not reachable or not listed within {wait:.0f}s")
    return client, cache


@cli.command()
@bridge_options
@direction_options
@click.option(
    "--http-addr",
    envvar="SERFBRIDGE_HTTP_ADDR",
    show_envvar=True,
    help="Health and metrics listener [default: 127.0.0.1:9473].",
)
@click.option(
    "--handler-socket",
    envvar="SERFBRIDGE_HANDLER_SOCKET",
    show_envvar=True,
    help=f"Unix socket the event handler hands events to [default: {HANDLER_SOCKET}].",
)
@click.option(
    "--resync",
    envvar="SERFBRIDGE_RESYNC",
    show_envvar=True,
    type=float,
    help="Seconds between full passes [default: 60].",
)
@click.option(
    "--debounce",
    envvar="SERFBRIDGE_DEBOUNCE",
    show_envvar=True,
    type=float,
    help="Quiet seconds before a pass runs [default: 0.2].",
)
@click.option(
    "--max-wait",
    envvar="SERFBRIDGE_MAX_WAIT",
    show_envvar=True,
    type=float,
    help="Longest a pass waits while events keep coming [default: 2].",
)
@click.option(
    "--failure-hold",
    envvar="SERFBRIDGE_FAILURE_HOLD",
    show_envvar=True,
    type=float,
    help="Seconds a member must stay failed before another bridge labels its Node failed, "
    "so a partition that takes down several peers one by one trips the guard [default: 5].",
)
@click.pass_context
def run(ctx: click.Context, /, **_: object) -> None:
    """Run the bridge daemon (both directions unless switched off).

    Sends READY=1 to systemd after the first sync and WATCHDOG=1 from its main loop;
    SIGTERM stops it, SIGHUP re-reads the config. Env: every option's variable above, plus
    SERF_RPC_ADDR, SERF_RPC_AUTH, KUBECONFIG, SERFBRIDGE_CLUSTER, SERFBRIDGE_NODE_NAME.
    """
    from serfbridge.daemon import Daemon

    s = _settings(ctx)
    logs.configure(s.log_format, s.verbose, daemon=True)

    def reload() -> config.Settings:
        return _settings(ctx)

    def kube_factory(settings: config.Settings) -> tuple[KubeClient, KubeCache]:
        return _kube_cache(settings, wait=None)

    ctx.exit(Daemon(s, reload=reload, kube_factory=kube_factory).run())


@cli.command()
@bridge_options
@direction_options
@click.option("--once", is_flag=True, default=True, help="One pass (the only mode for now).")
@click.option("--dry-run", is_flag=True, help="Print the plan; write nothing.")
@click.option(
    "--prune-imports",
    is_flag=True,
    help="Only delete every Service and EndpointSlice this cluster imported, and print them.",
)
@click.option(
    "--timeout",
    type=float,
    default=30.0,
    show_default=True,
    help="Seconds to wait for the Kubernetes list.",
)
@click.pass_context
def sync(
    ctx: click.Context,
    /,
    once: bool,
    *,
    dry_run: bool,
    prune_imports: bool,
    timeout: float,
    **_: object,
) -> None:
    """One reconcile pass in each enabled direction; --dry-run prints the plan.

    Env: SERF_RPC_ADDR, SERF_RPC_AUTH, KUBECONFIG, SERFBRIDGE_CLUSTER, SERFBRIDGE_NODE_NAME
    and every option's variable above.
    """
    from serfbridge import bridge  # the planners load only for the commands that plan
    from serfbridge.kube_writes import KubeObjects

    check_seconds(timeout, "--timeout", maximum=3600)
    s = _settings(ctx)
    client, cache = _kube_cache(s, wait=timeout)
    try:
        view = bridge.read_kube(cache)
        objects = KubeObjects(client, slice_version=view.slice_version)
        if prune_imports:
            pruned, writes = bridge.prune_imports(
                view, kube=objects, settings=s, dry_run=dry_run, cache=cache
            )
            _print_import_plan(pruned, dry_run=dry_run, writes=writes)
        else:
            _sync_once(ctx, s, view=view, writers=(client, objects, cache), dry_run=dry_run)
    finally:
        cache.stop(timeout=2)
        client.close()


def _sync_once(
    ctx: click.Context,
    s: config.Settings,
    *,
    view: KubeView,
    writers: tuple[KubeClient, KubeObjects, KubeCache],
    dry_run: bool,
) -> None:
    """One pass of each enabled direction, printed."""
    from serfbridge import bridge
    from serfbridge.failure_hold import FailureHold

    client, objects, cache = writers
    with _client(ctx) as serf:
        serf_view = bridge.read_serf(serf)
        if s.to_k8s:
            hold = FailureHold.one_shot(time.monotonic())
            plan, writes = bridge.label_pass(
                serf_view, view, kube=client, settings=s, dry_run=dry_run, cache=cache, hold=hold
            )
            _print_label_plan(plan, dry_run, writes=writes)
        if s.to_serf:
            pplan, writes = bridge.publish_pass(
                serf,
                serf_view,
                kube_view=view,
                kube=client,
                settings=s,
                dry_run=dry_run,
                cache=cache,
            )
            _print_publish_plan(pplan, dry_run, writes=writes, s=s)
        if s.import_services:
            iplan, writes = bridge.import_pass(
                serf_view, view, kube=objects, settings=s, dry_run=dry_run, cache=cache
            )
            _print_import_plan(iplan, dry_run=dry_run, writes=writes)


def _print_label_plan(plan: LabelPlan, dry_run: bool, *, writes: int) -> None:
    verb = "would patch" if dry_run else "patched"
    for patch in plan.patches:
        click.echo(f"to-k8s: {verb} node {patch.node} ({patch.reason})")
        for section, changes in (("label", patch.labels), ("annotation", patch.annotations)):
            for key, value in sorted(changes.items()):
                click.echo(f"  {section} {key}: {'<remove>' if value is None else value}")
    for note in plan.notes:
        click.echo(f"to-k8s: {note}")
    if plan.skipped:
        click.echo(f"to-k8s: skipped gossip: {dict(plan.skipped)}")
    if not plan.patches:
        click.echo("to-k8s: nothing to change")
    elif not dry_run:
        click.echo(f"to-k8s: {writes} PATCH request(s) sent")


def _print_import_plan(plan: ImportPlan, *, dry_run: bool, writes: int) -> None:
    """One line per write (``import: create Service cloudy/syncthing``), then the rest."""
    for write in plan.writes:
        click.echo(f"import: {write.describe()}")
    for note in plan.notes:
        click.echo(f"import: {note}")
    for name in plan.refused:
        click.echo(f"import: refused {name}: a Service of that name is not ours")
    if plan.skipped:
        click.echo(f"import: skipped entries: {dict(sorted(plan.skipped.items()))}")
    if not plan.writes:
        click.echo("import: nothing to change")
    elif not dry_run:
        click.echo(f"import: {writes} write(s) sent")


def _print_publish_plan(
    plan: PublishPass, dry_run: bool, *, writes: int, s: config.Settings
) -> None:
    for entry in plan.entries:
        click.echo(
            f"to-serf: publishes {entry.type} {entry.port} {entry.description} ({entry.txt})"
        )
    for left in plan.left_out:
        click.echo(
            f"to-serf: left out {left.namespace}/{left.service} port {left.port}: {left.reason}"
        )
    for problem in plan.problems:
        click.echo(f"to-serf: problem: {problem}")
    if plan.owned is not None:  # bridge.PublishPass: every write of the pass is in it
        for key, value in sorted(plan.owned.annotations.items()):
            shown = "<remove>" if value is None else value
            click.echo(
                f"to-serf: {'would record' if dry_run else 'record'} on node "
                f"{plan.owned.node} annotation {key}: {shown}"
            )
    for event in plan.events.events:
        svc = event.service
        click.echo(
            f"to-serf: {'would report' if dry_run else 'report'} Event {event.reason} "
            f"on {svc.namespace}/{svc.name}: {event.message}"
        )
    if plan.change.noop:
        click.echo("to-serf: tags unchanged")
    else:
        verb = "would set" if dry_run else "set"
        click.echo(
            f"to-serf: {verb} tags {sorted(plan.change.set_tags)}, delete "
            f"{list(plan.change.delete)}"
        )
    click.echo(
        f"to-serf: budget {plan.budget_used}/{s.tag_limit} bytes"
        + ("" if dry_run else f", {writes} tags call(s) sent")
    )


@cli.command()
@bridge_options
@click.option(
    "--handler-socket",
    envvar="SERFBRIDGE_HANDLER_SOCKET",
    show_envvar=True,
    help=f"Where a running daemon takes events [default: {HANDLER_SOCKET}].",
)
@click.pass_context
def handle(ctx: click.Context, /, **_: object) -> None:
    """Serf event-handler entry (run by handlers/serf-event-handler); prints nothing.

    Hands the event to a running daemon, or runs one to-k8s pass itself. Reads SERF_EVENT
    and stdin as Serf provides them. Env: SERFBRIDGE_HANDLER_SOCKET, SERF_RPC_ADDR,
    SERF_RPC_AUTH, KUBECONFIG, SERFBRIDGE_CLUSTER, SERFBRIDGE_NODE_NAME.
    """
    from serfbridge import handler, standalone  # the planners load only for what plans

    # Bounded: the member lines are only a trigger (the pass re-reads `members`).
    tty = sys.stdin is None or sys.stdin.isatty()
    stdin = b"" if tty else sys.stdin.buffer.read(handler.MAX_STDIN)
    event = handler.parse_event(os.environ, stdin)
    standalone.handle_event(event.name, event.members, settings=_settings(ctx))
