"""Sockets inside a lab network namespace, from a test process that stays outside it.

Role: helpers for ``tests.lab.netns``; not product code, no pytest. A socket belongs to
the network namespace its creating thread was in, so ``ns_socket`` makes one on a
short-lived thread that entered the namespace with setns(2) (Python 3.11 has no
``os.setns``); ``Relay`` forwards a port on the test's loopback to a port on the
namespace's loopback that way, so no lab address is ever routed outside the lab.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import os
import socket
import subprocess
import threading

from tests.lab.errors import LabError

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
    if check and done.returncode != 0:
        raise LabError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done


def ns_socket(ns: str) -> socket.socket:
    """A TCP socket that lives in namespace ``ns`` (made on a thread that entered it)."""
    made: list[socket.socket | BaseException] = []

    def enter() -> None:
        try:
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
            try:
                if _libc.setns(fd, _CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns into {ns} failed")
            finally:
                os.close(fd)
            made.append(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        except BaseException as exc:  # handed to the caller's thread
            made.append(exc)

    thread = threading.Thread(target=enter, daemon=True)
    thread.start()
    thread.join()
    if isinstance(made[0], BaseException):
        raise made[0]
    return made[0]


def ns_connect(ns: str, host: str, port: int, timeout: float = 5.0) -> socket.socket:
    sock = ns_socket(ns)
    sock.settimeout(timeout)
    try:
        sock.connect((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def ns_http_get(ns: str, port: int, path: str, timeout: float = 3.0) -> tuple[int, str]:
    """GET http://127.0.0.1:port/path inside ``ns``; (0, error) when it cannot connect."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        conn.sock = ns_connect(ns, "127.0.0.1", port, timeout)
        conn.request("GET", path)
        reply = conn.getresponse()
        body = reply.read().decode(errors="replace")
        conn.close()
        return reply.status, body
    except OSError as exc:
        return 0, str(exc)


class Relay:
    """127.0.0.1:<free> in the test's namespace -> 127.0.0.1:``port`` inside ``ns``."""

    def __init__(self, ns: str, port: int) -> None:
        self.ns, self.port = ns, port
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.local_port: int = self._listener.getsockname()[1]
        self._open: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = ns_connect(self.ns, "127.0.0.1", self.port)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            self._open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        for sock in self._open:
            with contextlib.suppress(OSError):
                sock.close()
