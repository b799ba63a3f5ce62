"""A real etcd + kube-apiserver v1.20 on loopback, for tests, `make demo` and the bench.

`LabApiServer` starts etcd and kube-apiserver with free ports in a temporary directory,
writes a static token file and a kubeconfig, waits for ``/readyz``, and stops both by PID.
The apiserver can be stopped and started again on the same port while etcd keeps the
data (outage tests); ``compact_etcd()`` plus ``watch_cache=False`` gives deterministic
410 Gone on watches. See ``../shared/reference/kube-apiserver.md`` for why each flag is set.

Callers: ``tests/fixtures_kube.py``, ``bench/bench_kube.py``, the demo.
This module must not import pytest or `kubernetes`: it speaks HTTP with the stdlib only.
A missing binary is a `MissingComponent` error that says how to install it, never a skip.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tests.lab.errors import LabError, MissingComponent

DEFAULT_CACHE = "/var/cache/serfbridge"
SERVICE_ACCOUNT_USER = "system:serviceaccount:kube-system:serfbridge"
SERVICE_ACCOUNT_GROUPS = (
    "system:serviceaccounts",
    "system:serviceaccounts:kube-system",
    "system:authenticated",
)


@dataclass(frozen=True)
class TokenUser:
    """A static-token user for ``--token-auth-file`` (RBAC tests)."""

    name: str
    token: str
    groups: tuple[str, ...] = ()


def serfbridge_service_account(token: str | None = None) -> TokenUser:
    """The token user the apiserver sees as the ``serfbridge`` ServiceAccount."""
    return TokenUser(SERVICE_ACCOUNT_USER, token or secrets.token_hex(16), SERVICE_ACCOUNT_GROUPS)


def find_apiserver_binary() -> str:
    """The kube-apiserver that `make kube-apiserver` built (env overrides)."""
    explicit = os.environ.get("SERFBRIDGE_KUBE_APISERVER")
    if explicit:
        return explicit
    cache = os.environ.get("SERFBRIDGE_CACHE", DEFAULT_CACHE)
    return str(Path(cache) / "kube-apiserver")


def require_components(apiserver: str) -> None:
    """Raise `MissingComponent` naming the install command for the first missing tool."""
    if not (os.path.isfile(apiserver) and os.access(apiserver, os.X_OK)):
        raise MissingComponent(
            f"kube-apiserver not found at {apiserver}: run `make kube-apiserver` "
            "(builds v1.20.2 once per machine; needs `make deps` first)"
        )
    for tool, package in (("etcd", "etcd-server"), ("openssl", "openssl")):
        if shutil.which(tool) is None:
            raise MissingComponent(f"{tool} not found: run `make deps` (apt-get install {package})")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class _Process:
    """One child process with its log file; stopped by PID (terminate, then kill)."""

    def __init__(self, name: str, argv: list[str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._log: IO[bytes] = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, grace: float = 10.0) -> None:
        if self.alive():
            self.popen.terminate()
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(grace)
        self._log.close()


class LabApiServer:
    """etcd + kube-apiserver on 127.0.0.1; use as a context manager or start()/stop()."""

    def __init__(
        self,
        *,
        watch_cache: bool = True,
        authorization_mode: str = "AlwaysAllow",
        users: Sequence[TokenUser] = (),
        workdir: str | Path | None = None,
        binary: str | None = None,
    ) -> None:
        if authorization_mode not in ("AlwaysAllow", "RBAC"):
            raise LabError(f"authorization_mode must be AlwaysAllow or RBAC: {authorization_mode}")
        self.watch_cache = watch_cache
        self.authorization_mode = authorization_mode
        self.users = tuple(users)
        self.binary = binary or find_apiserver_binary()
        self._own_dir = workdir is None
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="serfbridge-kube-"))
        self.admin_token = secrets.token_hex(16)
        self.etcd_port = free_port()
        self.etcd_peer_port = free_port()
        self.port = free_port()
        self._etcd: _Process | None = None
        self._apiserver: _Process | None = None
        #: Put before each child's argv (``ip netns exec NS`` for ``tests.lab.netns``).
        self.argv_prefix: tuple[str, ...] = ()

    # --- addresses and credentials ---------------------------------------------------

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def etcd_url(self) -> str:
        return f"http://127.0.0.1:{self.etcd_port}"

    @property
    def ca_file(self) -> Path:
        """The apiserver's self-signed certificate, which clients use as their CA."""
        return self.dir / "certs" / "apiserver.crt"

    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig (user ``admin`` in ``system:masters``)."""
        return self.dir / "kubeconfig"

    @property
    def etcd_pid(self) -> int | None:
        return self._etcd.pid if self._etcd else None

    @property
    def apiserver_pid(self) -> int | None:
        return self._apiserver.pid if self._apiserver else None

    def kubectl(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        """``kubectl`` as admin against this apiserver (never raises on its exit code)."""
        return subprocess.run(
            ["kubectl", "--kubeconfig", str(self.kubeconfig), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def kubeconfig_for(self, user: TokenUser) -> Path:
        """Write (once) and return a kubeconfig that authenticates as ``user``."""
        path = self.dir / f"kubeconfig-{user.token[:8]}"
        self._write_kubeconfig(path, user.name, user.token)
        return path

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> LabApiServer:
        require_components(self.binary)
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            self._write_credentials()
            self._start_etcd()
            self.start_apiserver()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop both processes by PID and remove the temp dir (if we made it)."""
        self.stop_apiserver()
        if self._etcd is not None:
            self._etcd.stop()
            self._etcd = None
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def start_apiserver(self, timeout: float = 60.0) -> None:
        """Start (or restart, same port) the apiserver and wait for /readyz."""
        if self._apiserver is not None and self._apiserver.alive():
            return
        log = self.dir / "kube-apiserver.log"
        argv = [*self.argv_prefix, *self._apiserver_argv()]
        self._apiserver = _Process("kube-apiserver", argv, log)
        self._wait(self._apiserver, self._apiserver_ready, timeout)

    def stop_apiserver(self) -> None:
        """Stop the apiserver only; etcd keeps running with the data."""
        if self._apiserver is not None:
            self._apiserver.stop()
            self._apiserver = None

    def __enter__(self) -> LabApiServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- etcd helpers ------------------------------------------------------------------

    def etcd_revision(self) -> int:
        """etcd's current revision (from a range reply's header)."""
        reply = self._etcd_post("/v3/kv/range", {"key": base64.b64encode(b"\0").decode()})
        return int(reply["header"]["revision"])

    def compact_etcd(self, revision: int | None = None) -> int:
        """Compact etcd physically at ``revision`` (default: now); returns the revision."""
        rev = revision if revision is not None else self.etcd_revision()
        self._etcd_post("/v3/kv/compaction", {"revision": str(rev), "physical": True})
        return rev

    def logs(self, lines: int = 60) -> str:
        """The last ``lines`` lines of each component's log, for failure dumps."""
        parts = []
        for name in ("etcd", "kube-apiserver"):
            path = self.dir / f"{name}.log"
            text = path.read_text(errors="replace") if path.exists() else "(no log)\n"
            tail = "\n".join(text.splitlines()[-lines:])
            parts.append(f"----- {name} ({path}) -----\n{tail}")
        return "\n".join(parts)

    # --- internals ---------------------------------------------------------------------

    def _write_credentials(self) -> None:
        (self.dir / "certs").mkdir(exist_ok=True)
        key, pub = self.dir / "sa.key", self.dir / "sa.pub"
        _run(["openssl", "genrsa", "-out", str(key), "2048"])
        _run(["openssl", "rsa", "-in", str(key), "-pubout", "-out", str(pub)])
        rows = [TokenUser("admin", self.admin_token, ("system:masters",)), *self.users]
        lines = [f'{u.token},{u.name},{u.name},"{",".join(u.groups)}"' for u in rows]
        (self.dir / "tokens.csv").write_text("\n".join(lines) + "\n")
        self._write_kubeconfig(self.kubeconfig, "admin", self.admin_token)

    def _write_kubeconfig(self, path: Path, user: str, token: str) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "lab",
                    "cluster": {"server": self.url, "certificate-authority": str(self.ca_file)},
                }
            ],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": user}}],
            "current-context": "lab",
        }
        path.write_text(json.dumps(config, indent=2))
        path.chmod(0o600)

    def _start_etcd(self, timeout: float = 30.0) -> None:
        peer = f"http://127.0.0.1:{self.etcd_peer_port}"
        argv = [
            "etcd", "--name", "lab", "--data-dir", str(self.dir / "etcd"),
            "--listen-client-urls", self.etcd_url, "--advertise-client-urls", self.etcd_url,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"lab={peer}", "--unsafe-no-fsync",
        ]  # fmt: skip
        self._etcd = _Process("etcd", [*self.argv_prefix, *argv], self.dir / "etcd.log")
        self._wait(self._etcd, self._etcd_ready, timeout)

    def _apiserver_argv(self) -> list[str]:
        d = self.dir
        argv = [
            self.binary,
            f"--etcd-servers={self.etcd_url}",
            f"--secure-port={self.port}", "--bind-address=127.0.0.1", "--insecure-port=0",
            f"--cert-dir={d / 'certs'}",
            f"--token-auth-file={d / 'tokens.csv'}",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={d / 'sa.pub'}",
            f"--service-account-signing-key-file={d / 'sa.key'}",
            "--service-cluster-ip-range=10.96.0.0/12",
            "--advertise-address=127.0.0.1", "--endpoint-reconciler-type=none",
            "--disable-admission-plugins=ServiceAccount",
            f"--authorization-mode={self.authorization_mode}",
        ]  # fmt: skip
        if not self.watch_cache:
            argv.append("--watch-cache=false")
        return argv

    def _wait(self, proc: _Process, ready: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not proc.alive():
                raise LabError(f"{proc.name} exited with {proc.popen.returncode}\n{self.logs()}")
            if ready():
                return
            time.sleep(0.2)
        raise LabError(f"{proc.name} not ready after {timeout:.0f}s\n{self.logs()}")

    def _etcd_ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.etcd_url + "/health", timeout=2) as reply:
                return bool(json.load(reply).get("health") == "true")
        except (OSError, ValueError):
            return False

    def _apiserver_ready(self) -> bool:
        if not self.ca_file.exists():
            return False
        request = urllib.request.Request(
            self.url + "/readyz", headers={"Authorization": f"Bearer {self.admin_token}"}
        )
        context = ssl.create_default_context(cafile=str(self.ca_file))
        try:
            with urllib.request.urlopen(request, timeout=2, context=context) as reply:
                return bool(reply.status == 200)
        except (OSError, ValueError, ssl.SSLError):
            return False

    def _etcd_post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(
            self.etcd_url + path, data=json.dumps(body).encode(), method="POST",
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=10) as reply:
                result: dict[str, Any] = json.load(reply)
                return result
        except urllib.error.HTTPError as exc:
            raise LabError(f"etcd {path}: {exc.code} {exc.read()!r}") from exc
        except OSError as exc:
            raise LabError(f"etcd {path}: {exc}") from exc


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
