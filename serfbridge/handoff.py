"""The handler-socket protocol: its wire format, and the client half (``hand_over``).

``serfbridge-handle`` (run by the agent for each event) tells a running daemon "look
again" over a Unix socket; the server half is ``handoff_server``. One exchange per
connection:

* the client sends one line, at most ``MAX_REQUEST`` bytes with its ``\\n``: a JSON object
  ``{"event": "member-join", "members": ["n2", ...], "count": 7}``. ``event`` is one of
  ``MEMBER_EVENTS``; ``members`` are names for the log only (as many as fit), ``count``
  how many the event had;
* the server answers one line: ``ok``, ``denied`` (the peer is not the agent's user,
  see ``localpeers``) or ``error: <why>`` (the request broke these rules).

The event is only a trigger: the daemon re-reads Serf and Kubernetes, so nothing in a
request is trusted beyond "something happened". Must not import anything slow: this
module is on the hand-over path, where Serf's serial event loop waits for us
(``reference/serf-rpc.md`` §7.4); the standard library's ``json`` and ``socket`` only.
"""

from __future__ import annotations

import json
import socket

MEMBER_EVENTS = ("member-join", "member-leave", "member-failed", "member-update", "member-reap")
#: One request line, newline included. A coalesced event with hundreds of members still
#: fits its names' first part; the rest is counted.
MAX_REQUEST = 8192
MAX_NAME = 256  # a member name longer than this is cut (it is only logged)


def encode_request(event: str, members: tuple[str, ...] | list[str]) -> bytes:
    """The request line for ``event``; member names that do not fit are only counted."""
    names: list[str] = []
    size = len(event) + 64
    for name in members:
        name = name[:MAX_NAME]
        size += len(json.dumps(name)) + 2
        if size > MAX_REQUEST:
            break
        names.append(name)
    line = json.dumps({"event": event, "members": names, "count": len(members)})
    return line.encode() + b"\n"


class HandOff:
    """A decoded request. A plain class: dataclasses cost milliseconds to import."""

    __slots__ = ("count", "event", "members")

    def __init__(self, event: str, members: tuple[str, ...], count: int) -> None:
        self.event = event
        self.members = members
        self.count = count

    def __repr__(self) -> str:
        return f"HandOff({self.event!r}, {self.members!r}, {self.count!r})"


def decode_request(line: bytes) -> HandOff:
    """A request line (without its ``\\n``) -> ``HandOff``; anything else -> HandoffError."""
    from serfbridge.errors import HandoffError  # server side only: the client never loads it

    if len(line) >= MAX_REQUEST:
        raise HandoffError(f"request longer than {MAX_REQUEST} bytes")
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError) as exc:  # bytes not UTF-8 are a ValueError too
        raise HandoffError("request is not JSON") from exc
    if not isinstance(obj, dict):
        raise HandoffError(f"request must be a JSON object, got {type(obj).__name__}")
    event = obj.get("event")
    if not isinstance(event, str) or event not in MEMBER_EVENTS:
        raise HandoffError("request names no member event")
    members = obj.get("members", [])
    if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
        raise HandoffError("members must be a list of names")
    count = obj.get("count", len(members))
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise HandoffError("count must be a non-negative integer")
    return HandOff(event, tuple(m[:MAX_NAME] for m in members), count)


def hand_over(path: str, event: str, members: tuple[str, ...], *, timeout: float = 1.0) -> bool:
    """Give the event to a running daemon; False when none listens at ``path``, or it
    did not say ``ok`` within ``timeout`` (the caller then does the work itself)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
        sock.sendall(encode_request(event, members))
        return sock.recv(16).startswith(b"ok\n")
    except OSError:
        return False
    finally:
        sock.close()
