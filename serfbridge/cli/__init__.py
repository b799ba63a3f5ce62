"""The ``serfbridge`` command line: parse, call one function, print, map errors to exit codes.

Thin by design (like kopf's CLI): each command turns its options into arguments for the
client, a planner or the daemon, and prints the result. Exit codes: 0 ok, 1 runtime
failure, 2 bad input; errors are one line on stderr, with a traceback only under ``-v``.
The RPC auth key is read from a flag, ``SERF_RPC_AUTH``, a file or systemd credentials,
and never printed or logged. ``base`` holds the group; the other modules add commands.
"""

from __future__ import annotations

from serfbridge.cli import bridge, serf, services, status  # noqa: F401  (they register commands)
from serfbridge.cli.base import cli


def main() -> None:
    cli(prog_name="serfbridge")


__all__ = ["cli", "main"]
