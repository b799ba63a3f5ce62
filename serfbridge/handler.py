"""``serfbridge handle``: what the Serf agent runs for each event (via the shim).

Serf runs handlers one at a time on its event loop with no timeout
(``reference/serf-rpc.md`` §7.4), so this must be quick. The event is only a trigger
(its stdin cannot carry tags with ``,`` or ``=`` reliably, §7.3): when a local
``serfbridge run`` listens on the handler socket, the event is handed over and we exit;
otherwise one to-k8s pass runs here through ``standalone`` (the bridge, with the same
planner and applier as the daemon; cut off after ``STANDALONE_BUDGET``; refused at once
when no credentials exist). Must not: import the CLI, or anything slow before the
hand-over has been tried.

``parse_event`` is pure and takes the environment as an argument.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Mapping

from serfbridge import handoff
from serfbridge.defaults import HANDLER_SOCKET
from serfbridge.member_events import MEMBER_EVENTS


class SerfEvent:
    """What Serf told the handler. A plain class, not a dataclass or named tuple: on the
    hand-over path every import counts (``dataclasses`` and ``typing`` cost several
    milliseconds between them; bench/bench_handler.py)."""

    __slots__ = ("members", "name", "query", "self_name", "user_event")

    def __init__(
        self,
        name: str,
        self_name: str,
        *,
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
    return handoff.hand_over(path, event.name, members=event.members, timeout=timeout)


#: What is read of serf's member lines on stdin (about 40 000 members): they are only a
#: trigger, the pass re-reads ``members``.
MAX_STDIN = 4 * 1024 * 1024


def socket_path(env: Mapping[str, str]) -> str:
    """Where the daemon listens: the environment, else the config file, else the default."""
    return env.get("SERFBRIDGE_HANDLER_SOCKET") or _file_values(env).get(
        "handler_socket", HANDLER_SOCKET
    )


def _file_values(env: Mapping[str, str]) -> dict[str, str]:
    from serfbridge import config  # only when needed: it costs most of this command's start

    return _read_file_values(env.get("SERFBRIDGE_CONFIG", config.DEFAULT_CONFIG))


@functools.cache  # the socket path and the credentials check both ask: read the file once
def _read_file_values(path: str) -> dict[str, str]:
    from serfbridge import config

    try:
        return config.read_config_file(path)
    except Exception:  # a broken file is reported by the standalone path, with its details
        return {}


IN_CLUSTER_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"
#: The longest a standalone pass may hold the agent's event loop (serf has no timeout).
STANDALONE_BUDGET = 10.0


def maybe_no_credentials(env: Mapping[str, str]) -> str | None:
    """Why no standalone pass can run (no Kubernetes credentials to load), or None.

    The same order as ``kube.load_client``: $KUBECONFIG (or the file's ``KUBECONFIG``),
    else the in-cluster account, else ~/.kube/config. Only existence is checked: a file
    that is there but broken is reported by the pass itself, with its details.
    """
    path = env.get("KUBECONFIG") or _file_values(env).get("kubeconfig")
    if not path and env.get("KUBERNETES_SERVICE_HOST"):
        path = IN_CLUSTER_TOKEN
    path = path or os.path.join(env.get("HOME") or os.path.expanduser("~"), ".kube", "config")
    return None if os.path.isfile(path) else f"no Kubernetes credentials ({path} does not exist)"


def _give_up(signum: int, frame: object) -> None:
    sys.stderr.write(f"serfbridge-handle: standalone pass gave up after {STANDALONE_BUDGET:g}s\n")
    os._exit(1)


def main() -> None:
    """``serfbridge-handle``, what the shim runs: hand over fast, else the full command.

    Only the standard library is imported on the hand-over path, so the agent's event loop
    is held for as short a time as possible (``reference/serf-rpc.md`` §7.4). Without a
    daemon, a pass that cannot run fails at once with one line (exit 2, as the full
    command would after loading its libraries), and one that can is bounded in time.
    """
    if sys.argv[1:] == ["--version"]:
        from serfbridge import __version__

        print(f"serfbridge-handle, version {__version__}")
        return
    env = os.environ
    stdin = b"" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.buffer.read(MAX_STDIN)
    event = parse_event(env, stdin)
    path = socket_path(env)
    if not event.is_member_event or hand_over(path, event):
        return
    why = maybe_no_credentials(env)
    if why is not None:
        sys.stderr.write(
            f"serfbridge-handle: no daemon at {path} and {why}: {event.name} not handled\n"
        )
        sys.exit(2)
    import signal

    signal.signal(signal.SIGALRM, _give_up)
    signal.setitimer(signal.ITIMER_REAL, STANDALONE_BUDGET)
    from serfbridge import standalone  # no daemon: one pass here, through the bridge

    standalone.main(event.name, env)
