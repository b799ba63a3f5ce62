"""The daemon's half of the handler-socket protocol (the wire format is ``handoff.py``).

Any local user is a neighbour, so the socket holds against all of them:

* only the agent's user may hand over: the socket file is 0600 (root, the agent's usual
  user, passes file permissions anyway), or 0666 when ``--agent-user`` names other users,
  and every peer's uid is checked with ``SO_PEERCRED`` before a byte is read;
* each client gets its own thread, a deadline (``deadline`` seconds for the whole
  exchange) and a bounded read (``handoff.MAX_REQUEST``), so a slow or silent client
  holds one of ``max_clients`` slots for at most the deadline, and blocks no one;
* the accept loop survives anything: bad input only ends that client's thread, and
  running out of file descriptors (EMFILE) pauses accepting for a moment.

Refusals and bad requests are counted (``on_refused``) and logged at most once a minute,
so a neighbour cannot flood the log either. Must not: interpret an event beyond "look
again" (``on_event`` only pokes), or block the daemon.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from serfbridge import handoff, localpeers
from serfbridge.errors import ConfigError, HandoffError

log = logging.getLogger(__name__)
#: accept() errors that mean "out of descriptors or memory": wait, then accept again.
EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class RateLimitedLog:
    """Log a kind of complaint once per ``every`` seconds, with how many were held back."""

    def __init__(self, logger: logging.Logger, every: float = 60.0) -> None:
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
        on_event: Callable[[handoff.HandOff], None],
        *,
        trusted: frozenset[int],
        open_to_others: bool = False,
        on_refused: Callable[[str], None] = lambda reason: None,
        deadline: float = 2.0,
        max_clients: int = 16,
    ) -> None:
        self.path, self._on_event, self._on_refused = path, on_event, on_refused
        self.trusted, self.deadline = trusted, deadline
        self._mode = 0o666 if open_to_others else 0o600
        self._slots = threading.BoundedSemaphore(max_clients)
        self._stopping = threading.Event()
        self._complaints = RateLimitedLog(log)
        self._sock = self._listen()
        self._thread = threading.Thread(
            target=self._accept_loop, name="handler-socket", daemon=True
        )

    def _listen(self) -> socket.socket:
        """The socket; a stale file from a killed daemon is replaced."""
        try:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
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
        with contextlib.suppress(OSError):
            os.unlink(self.path)

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
                log.exception("handler socket: unexpected error admitting a client")

    def _on_accept_error(self, exc: OSError) -> None:
        kind = "exhausted" if exc.errno in EXHAUSTED else "accept"
        self._on_refused(kind)
        self._complaints.warning(kind, f"handler socket: accept failed: {exc.strerror}; retrying")
        self._stopping.wait(0.1)  # the descriptors come back as clients finish

    def _admit(self, conn: socket.socket) -> None:
        uid = localpeers.peer_uid(conn)
        if uid not in self.trusted:
            self._refuse(conn, "denied", f"refused a client of uid {localpeers.user_name(uid)}")
            return
        # A slot frees within the deadline, so waiting for one is bounded too.
        if not self._slots.acquire(timeout=self.deadline):
            self._refuse(conn, "busy", "all client slots busy; refused a client")
            return
        try:
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()
        except BaseException:
            self._slots.release()
            raise

    def _refuse(self, conn: socket.socket, reason: str, message: str) -> None:
        self._on_refused(reason)
        self._complaints.warning(
            reason, f"handler socket: {message} (only the agent's user may hand over)"
        )
        with conn, contextlib.suppress(OSError):
            conn.setblocking(False)
            conn.send(f"{reason}\n".encode())

    # --- one client -------------------------------------------------------------------------

    def _serve(self, conn: socket.socket) -> None:
        try:
            with conn:
                self._exchange(conn)
        except OSError as exc:
            log.debug("handler socket: client gone: %s", exc)
        except Exception:
            log.exception("handler socket: unexpected error serving a client")
        finally:
            self._slots.release()

    def _exchange(self, conn: socket.socket) -> None:
        try:
            request = handoff.decode_request(self._read_line(conn))
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
        end = time.monotonic() + self.deadline
        data = b""
        while b"\n" not in data:
            if len(data) >= handoff.MAX_REQUEST:
                raise HandoffError(f"request longer than {handoff.MAX_REQUEST} bytes")
            remaining = end - time.monotonic()
            if remaining <= 0:
                raise HandoffError(f"no complete request within {self.deadline:g}s")
            conn.settimeout(remaining)
            try:
                chunk = conn.recv(handoff.MAX_REQUEST - len(data))
            except TimeoutError:
                raise HandoffError(f"no complete request within {self.deadline:g}s") from None
            if not chunk:
                raise HandoffError("client closed before a complete request")
            data += chunk
        return data.split(b"\n", 1)[0]
