"""``serfbridge handle``: what the Serf agent runs for each event (via the shim).

Serf runs handlers one at a time on its event loop with no timeout
(``reference/serf-rpc.md`` §7.4), so this must be quick. The event is only a trigger
(its stdin cannot carry tags with ``,`` or ``=`` reliably, §7.3): when a local
``serfbridge run`` listens on the handler socket, the event is handed over and we exit;
otherwise one to-k8s pass runs here, with the same planner and applier as the daemon.

``parse_event`` is pure and takes the environment as an argument.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from serfbridge import handoff
from serfbridge.handoff import MEMBER_EVENTS


class SerfEvent:
    """What Serf told the handler. A plain class, not a dataclass or named tuple: on the
    hand-over path every import counts (``dataclasses`` and ``typing`` cost several
    milliseconds between them; bench/bench_handler.py)."""

    __slots__ = ("members", "name", "query", "self_name", "user_event")

    def __init__(
        self,
        name: str,
        self_name: str,
        user_event: str | None = None,
        query: str | None = None,
        members: tuple[str, ...] = (),
    ) -> None:
        self.name = name  # SERF_EVENT
        self.self_name = self_name
        self.user_event = user_event
        self.query = query
        self.members = members  # names from stdin, for the log only

    def _fields(self) -> tuple[object, ...]:
        return (self.name, self.self_name, self.user_event, self.query, self.members)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SerfEvent) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return f"SerfEvent{self._fields()!r}"

    @property
    def is_member_event(self) -> bool:
        return self.name in MEMBER_EVENTS


def parse_event(env: Mapping[str, str], stdin: bytes) -> SerfEvent:
    """The event Serf described in ``env`` and ``stdin``; only names are taken from stdin."""
    name = env.get("SERF_EVENT", "")
    members: tuple[str, ...] = ()
    if name in MEMBER_EVENTS:
        lines = stdin.decode("utf-8", "replace").splitlines()
        members = tuple(line.split("\t", 1)[0] for line in lines if line.strip())
    return SerfEvent(
        name=name,
        self_name=env.get("SERF_SELF_NAME", ""),
        user_event=env.get("SERF_USER_EVENT"),
        query=env.get("SERF_QUERY_NAME"),
        members=members,
    )


def hand_over(path: str, event: SerfEvent, *, timeout: float = 1.0) -> bool:
    """Give the event to a running daemon; False when none listens at ``path``."""
    return handoff.hand_over(path, event.name, event.members, timeout=timeout)


DEFAULT_SOCKET = "/run/serfbridge/handler.sock"


def socket_path(env: Mapping[str, str]) -> str:
    """Where the daemon listens: the environment, else the config file, else the default."""
    path = env.get("SERFBRIDGE_HANDLER_SOCKET")
    if path:
        return path
    from serfbridge import config  # only when needed: it costs most of this command's start

    try:
        values = config.read_config_file(env.get("SERFBRIDGE_CONFIG", config.DEFAULT_CONFIG))
    except Exception:  # a broken file is reported by the standalone path, with its details
        values = {}
    return values.get("handler_socket", DEFAULT_SOCKET)


def main() -> None:
    """``serfbridge-handle``, what the shim runs: hand over fast, else the full command.

    Only the standard library is imported on the hand-over path, so the agent's event loop
    is held for as short a time as possible (``reference/serf-rpc.md`` §7.4).
    """
    env = os.environ
    stdin = b"" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.buffer.read()
    event = parse_event(env, stdin)
    if not event.is_member_event or hand_over(socket_path(env), event):
        return
    from serfbridge.cli import cli  # no daemon: do the work here, with the whole CLI

    cli(args=["handle"], prog_name="serfbridge")
