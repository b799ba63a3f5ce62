"""Health and metrics over HTTP: ``/healthz``, ``/readyz`` and Prometheus ``/metrics``.

The daemon owns one ``Metrics`` (a private prometheus-client registry, so several
daemons in one test process never collide) and one ``HealthServer`` thread. ``/readyz``
is 200 only while the daemon says it is ready: both sides connected and synced.
``/status`` is the same state as JSON, read by ``serfbridge status``.

Any local user can connect, so the listener is bounded: a read timeout per request
(``READ_TIMEOUT``), at most ``MAX_CONNECTIONS`` open connections (a new one closes the
oldest, so a probe always gets through a flood of half-open requests), and an accept
loop that survives running out of file descriptors (it pauses, logs once a minute, and
goes on).

Must not: decide readiness itself (the daemon passes a callable) or block the daemon.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from serfbridge.errors import ConfigError
from serfbridge.rpc.client import split_addr

log = logging.getLogger(__name__)
READ_TIMEOUT = 5.0  # seconds a request may take to arrive; kubelet probes take 1 ms
MAX_CONNECTIONS = 64
_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_EXHAUSTED_LOG_EVERY = 60.0  # seconds: a descriptor shortage lasts, one warning a minute


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.last_sync = Gauge(
            "serfbridge_last_sync_timestamp_seconds",
            "Unix time of the last successful pass",
            ["direction"],
            registry=r,
        )
        self.kube_events = Counter(
            "serfbridge_kube_events_total",
            "Kubernetes Events created (entries not published)",
            registry=r,
        )
        self.writes = Counter(
            "serfbridge_writes_total",
            "Writes sent: tags calls (to-serf), Node patches (to-k8s), objects (imports)",
            ["direction"],
            registry=r,
        )
        self.passes = Counter(
            "serfbridge_passes_total", "Reconcile passes finished", ["direction"], registry=r
        )
        self.pass_cpu = Counter(
            "serfbridge_pass_cpu_seconds_total",
            "CPU time the passes took (their thread's own)",
            ["direction"],
            registry=r,
        )
        self.errors = Counter("serfbridge_errors_total", "Errors by kind", ["kind"], registry=r)
        self.budget = Gauge(
            "serfbridge_tag_budget_bytes", "Bytes of the tag budget", ["state"], registry=r
        )
        self.not_published = Gauge(
            "serfbridge_entries_not_published",
            "Service ports this node should publish but does not",
            registry=r,
        )
        self.rpc_connected = Gauge(
            "serfbridge_rpc_connected", "1 while the Serf RPC works", registry=r
        )
        self.kube_synced = Gauge(
            "serfbridge_kube_synced", "1 while the Kubernetes cache is complete", registry=r
        )
        self.events_dropped = Counter(
            "serfbridge_events_dropped_total", "Serf events dropped locally", registry=r
        )
        self.gossip_rejects = Counter(
            "serfbridge_gossip_rejects_total",
            "Gossiped tags that could not become labels",
            ["reason"],
            registry=r,
        )
        self.refused = Counter(
            "serfbridge_local_refusals_total",
            "Local clients refused or cut off (handler socket, HTTP listener)",
            ["listener", "reason"],
            registry=r,
        )
        self.imported = Gauge(
            "serfbridge_imported",
            "Imported objects the last imports plan wants (services, endpoint_slices)",
            ["kind"],
            registry=r,
        )
        self.import_skipped = Gauge(
            "serfbridge_import_skipped",
            "Cloudy entries (or members' tags) the last imports plan skipped, by reason",
            ["reason"],
            registry=r,
        )
        self.import_refused = Gauge(
            "serfbridge_import_refused",
            "Import Service names refused: taken by a Service we do not own",
            registry=r,
        )
        for kind in ("services", "endpoint_slices"):
            self.imported.labels(kind)
        for direction in ("to-serf", "to-k8s", "imports"):
            self.writes.labels(direction)
            self.passes.labels(direction)
            self.pass_cpu.labels(direction)
        self.budget.labels("limit")
        self.budget.labels("used")


class _BoundedServer(ThreadingHTTPServer):
    """``ThreadingHTTPServer`` with a connection cap and an accept that survives EMFILE."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(
        self, addr: tuple[str, int], handler: type[BaseHTTPRequestHandler], *, metrics: Metrics
    ) -> None:
        self._metrics = metrics
        self._open: dict[socket.socket, float] = {}  # connection -> when it was accepted
        self._open_lock = threading.Lock()
        self._exhausted_logged = -60.0
        super().__init__(addr, handler)

    def get_request(self) -> tuple[socket.socket, object]:
        try:
            return super().get_request()
        except OSError as exc:
            if exc.errno in _EXHAUSTED:
                self._metrics.refused.labels("http", "exhausted").inc()
                now = time.monotonic()
                if now - self._exhausted_logged >= _EXHAUSTED_LOG_EVERY:
                    self._exhausted_logged = now
                    log.warning("http: accept failed: %s; retrying", exc.strerror)
                # serve_forever would spin on the ready listener: pause while connections
                # close and give their descriptors back.
                time.sleep(0.05)
            raise  # socketserver drops this one attempt and goes on serving

    def process_request(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        with self._open_lock:
            while len(self._open) >= MAX_CONNECTIONS:
                oldest = min(self._open, key=self._open.__getitem__)
                del self._open[oldest]
                self._metrics.refused.labels("http", "cap").inc()
                with contextlib.suppress(OSError):
                    oldest.shutdown(socket.SHUT_RDWR)  # its thread sees EOF and ends
            self._open[request] = time.monotonic()
        super().process_request(request, client_address)

    def handle_error(self, request: object, client_address: object) -> None:
        # A client cut off or gone mid-request. socketserver would print a traceback; a
        # line per client, even at DEBUG, would let a flood of clients flood the log.
        self._metrics.refused.labels("http", "error").inc()

    def shutdown_request(self, request: socket.socket) -> None:  # type: ignore[override]
        with self._open_lock:
            self._open.pop(request, None)
        super().shutdown_request(request)


class HealthServer:
    """A small threaded HTTP server; ``ready`` and ``status`` are asked per request."""

    def __init__(
        self,
        addr: str,
        metrics: Metrics,
        *,
        ready: Callable[[], tuple[bool, str]],
        status: Callable[[], dict[str, object]],
    ) -> None:
        host, port = split_addr(addr)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            timeout = READ_TIMEOUT  # per read; set on the socket by StreamRequestHandler

            def do_GET(self) -> None:
                outer._serve(self)

            def log_message(self, format: str, *args: object) -> None:
                pass  # probes every few seconds would flood the log

        try:
            self._server = _BoundedServer((host, port), Handler, metrics=metrics)
        except OSError as exc:
            raise ConfigError(f"cannot listen on --http-addr {addr}: {exc.strerror}") from exc
        self._server.daemon_threads = True
        self.metrics, self.ready, self.status = metrics, ready, status
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="health", daemon=True
        )

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _serve(self, request: BaseHTTPRequestHandler) -> None:
        path = request.path.split("?")[0]
        if path == "/healthz":
            self._reply(request, 200, body=b"ok\n", ctype="text/plain")
        elif path == "/readyz":
            ok, why = self.ready()
            self._reply(request, 200 if ok else 503, body=f"{why}\n".encode(), ctype="text/plain")
        elif path == "/metrics":
            self._reply(
                request, 200, body=generate_latest(self.metrics.registry), ctype=CONTENT_TYPE_LATEST
            )
        elif path == "/status":
            body = json.dumps(self.status(), indent=2, sort_keys=True).encode()
            self._reply(request, 200, body=body + b"\n", ctype="application/json")
        else:
            self._reply(request, 404, body=b"not found\n", ctype="text/plain")

    @staticmethod
    def _reply(request: BaseHTTPRequestHandler, code: int, *, body: bytes, ctype: str) -> None:
        request.send_response(code)
        request.send_header("Content-Type", ctype)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)
