"""The handler-socket protocol, both halves: the wire format, ``hand_over`` (the client,
run by ``serfbridge-handle``) and ``HandoffServer`` (the daemon's listener).

``serfbridge-handle`` (run by the agent for each event) tells a running daemon "look
again" over a Unix socket. One exchange per connection:

* the client sends one line, at most ``MAX_REQUEST`` bytes with its ``\\n``: a JSON object
  ``{"event": "member-join", "members": ["n2", ...], "count": 7}``. ``event`` is one of
  ``MEMBER_EVENTS``; ``members`` are names for the log only (as many as fit), ``count``
  how many the event had;
* the server answers one line: ``ok``, ``denied`` (the peer is not the agent's user,
  see ``localpeers``), ``busy`` or ``error: <why>`` (the request broke these rules).

The event is only a trigger: the daemon re-reads Serf and Kubernetes, so nothing in a
request is trusted beyond "something happened".

Any local user is a neighbour, so the server holds against all of them:

* only the agent's user may hand over: the socket file is 0600 (root, the agent's usual
  user, passes file permissions anyway), or 0666 when ``--agent-user`` names other users,
  and every peer's uid is checked with ``SO_PEERCRED`` before a byte is read;
* each client gets its own thread, a deadline (``deadline`` seconds for the whole
  exchange) and a bounded read (``MAX_REQUEST``), so a slow or silent client holds one
  of ``max_clients`` slots for at most the deadline, and blocks no one;
* the accept loop survives anything: bad input only ends that client's thread, and
  running out of file descriptors (EMFILE) pauses accepting for a moment.

Refusals and bad requests are counted (``on_refused``) and logged at most once a minute,
so a neighbour cannot flood the log either.

Must not: import anything slow at module level. The client half is on the hand-over
path, where Serf's serial event loop waits for us (``reference/serf-rpc.md`` §7.4): the
module loads the standard library's ``json`` and ``socket`` only, and the server half
imports what it needs (``logging``, ``threading``, ``localpeers``) when it is built.
The server must not interpret an event beyond "look again" (``on_event`` only pokes),
or block the daemon.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time

from serfbridge.member_events import MEMBER_EVENTS

TYPE_CHECKING = False  # not typing's: importing typing costs milliseconds on this path
if TYPE_CHECKING:  # the server half's types; imported for real only when it is built
    import logging
    from collections.abc import Callable
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

    def __init__(self, event: str, members: tuple[str, ...], *, count: int) -> None:
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
    return HandOff(event, tuple(m[:MAX_NAME] for m in members), count=count)


def hand_over(path: str, event: str, *, members: tuple[str, ...], timeout: float = 1.0) -> bool:
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


# --- the server half: the daemon's listener ----------------------------------------------

LOGGER = "serfbridge.handoff"
#: accept() errors that mean "out of descriptors or memory": wait, then accept again.
EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class RateLimitedLog:
    """Log a kind of complaint once per ``every`` seconds, with how many were held back."""

    def __init__(self, logger: logging.Logger, every: float = 60.0) -> None:
        import threading

        self._log, self._every = logger, every
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def warning(self, kind: str, message: str) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(kind, -self._every) < self._every:
                self._held[kind] = self._held.get(kind, 0) + 1
                return
            self._last[kind] = now
            held = self._held.pop(kind, 0)
        suffix = f" ({held} more like it since the last report)" if held else ""
        self._log.warning("%s%s", message, suffix)


class HandoffServer:
    """Listens on ``path``; calls ``on_event`` for each valid hand-over from a trusted uid."""

    def __init__(
        self,
        path: str,
        on_event: Callable[[HandOff], None],
        *,
        trusted: frozenset[int],
        open_to_others: bool = False,
        on_refused: Callable[[str], None] = lambda reason: None,
        deadline: float = 2.0,
        max_clients: int = 16,
    ) -> None:
        import logging
        import threading

        self._log = logging.getLogger(LOGGER)
        self.path, self._on_event, self._on_refused = path, on_event, on_refused
        self.trusted, self.deadline = trusted, deadline
        self._mode = 0o666 if open_to_others else 0o600
        self._slots = threading.BoundedSemaphore(max_clients)
        self._stopping = threading.Event()
        self._complaints = RateLimitedLog(self._log)
        self._sock = self._listen()
        self._thread = threading.Thread(
            target=self._accept_loop, name="handler-socket", daemon=True
        )

    def _listen(self) -> socket.socket:
        """The socket; a stale file from a killed daemon is replaced."""
        from serfbridge.errors import ConfigError

        try:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            _maybe_unlink(self.path, FileNotFoundError)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on --handler-socket {self.path}: {exc.strerror}"
            ) from exc
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(self.path)
            # Between bind and chmod the file has the umask's mode: the uid check below
            # is what keeps others out, the mode is the first wall.
            os.chmod(self.path, self._mode)
        except OSError as exc:
            sock.close()
            raise ConfigError(
                f"cannot listen on --handler-socket {self.path}: {exc.strerror}"
            ) from exc
        sock.listen(64)
        sock.settimeout(0.5)  # wake up now and then to notice stop()
        return sock

    def start(self) -> HandoffServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._sock.close()
        if self._thread.is_alive():
            self._thread.join(timeout=2)
        _maybe_unlink(self.path, OSError)

    # --- the accept loop: never exits before stop() ---------------------------------------

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if self._stopping.is_set():
                    return
                self._on_accept_error(exc)
                continue
            try:
                self._admit(conn)
            except Exception:  # a bug here must not end the hand-over for good
                conn.close()
                self._log.exception("handler socket: unexpected error admitting a client")

    def _on_accept_error(self, exc: OSError) -> None:
        kind = "exhausted" if exc.errno in EXHAUSTED else "accept"
        self._on_refused(kind)
        self._complaints.warning(kind, f"handler socket: accept failed: {exc.strerror}; retrying")
        self._stopping.wait(0.1)  # the descriptors come back as clients finish

    def _admit(self, conn: socket.socket) -> None:
        import threading

        from serfbridge import localpeers

        uid = localpeers.peer_uid(conn)
        if uid not in self.trusted:
            self._refuse(
                conn, "denied", message=f"refused a client of uid {localpeers.user_name(uid)}"
            )
            return
        # A slot frees within the deadline, so waiting for one is bounded too.
        if not self._slots.acquire(timeout=self.deadline):
            self._refuse(conn, "busy", message="all client slots busy; refused a client")
            return
        try:
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()
        except BaseException:
            self._slots.release()
            raise

    def _refuse(self, conn: socket.socket, reason: str, *, message: str) -> None:
        self._on_refused(reason)
        self._complaints.warning(
            reason, f"handler socket: {message} (only the agent's user may hand over)"
        )
        with conn:
            try:
                conn.setblocking(False)
                conn.send(f"{reason}\n".encode())
            except OSError:
                pass  # a refused client that does not read is not waited for

    # --- one client -------------------------------------------------------------------------

    def _serve(self, conn: socket.socket) -> None:
        try:
            with conn:
                self._exchange(conn)
        except OSError as exc:
            self._log.debug("handler socket: client gone: %s", exc)
        except Exception:
            self._log.exception("handler socket: unexpected error serving a client")
        finally:
            self._slots.release()

    def _exchange(self, conn: socket.socket) -> None:
        from serfbridge.errors import HandoffError

        try:
            request = decode_request(self._read_line(conn))
        except HandoffError as exc:
            self._on_refused("bad-request")
            self._complaints.warning("bad-request", f"handler socket: {exc}")
            conn.settimeout(0.2)
            conn.sendall(f"error: {exc}\n".encode())
            return
        conn.sendall(b"ok\n")  # first: Serf's event loop waits on the handler
        self._on_event(request)

    def _read_line(self, conn: socket.socket) -> bytes:
        """One line within the deadline and ``MAX_REQUEST`` bytes, or HandoffError."""
        from serfbridge.errors import HandoffError

        end = time.monotonic() + self.deadline
        data = b""
        while b"\n" not in data:
            if len(data) >= MAX_REQUEST:
                raise HandoffError(f"request longer than {MAX_REQUEST} bytes")
            remaining = end - time.monotonic()
            if remaining <= 0:
                raise HandoffError(f"no complete request within {self.deadline:g}s")
            conn.settimeout(remaining)
            try:
                chunk = conn.recv(MAX_REQUEST - len(data))
            except TimeoutError:
                raise HandoffError(f"no complete request within {self.deadline:g}s") from None
            if not chunk:
                raise HandoffError("client closed before a complete request")
            data += chunk
        return data.split(b"\n", 1)[0]


def _maybe_unlink(path: str, missing_ok: type[OSError]) -> None:
    """Remove ``path``; errors of kind ``missing_ok`` are ignored (contextlib is not loaded)."""
    try:
        os.unlink(path)
    except missing_ok:
        return
