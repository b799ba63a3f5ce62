"""Settings: one frozen value built from flags, environment and the config file.

Precedence is flags, then environment, then ``/etc/serfbridge/config`` (env style:
``KEY=value`` lines, using the environment names such as ``SERFBRIDGE_CLUSTER=lab`` or
the flag names such as ``cluster-name=lab``), then defaults. The CLI parses flags and
environment with click; this module reads the file and merges it in for every value that
came from neither, and does so again on SIGHUP; ``config_rules`` then checks every
value, whichever layer it came from. Every file read here is read bounded and must be
UTF-8 (``read_text``), and kubeconfig files are size-checked before the Kubernetes
client reads them whole. The RPC auth key is stripped and never appears in a ``repr``,
a log line or an error message; errors about the file give its line number, not values.

The planners never see ``Settings``: ``plan_settings`` maps it, once, onto the
``PlanSettings`` they take (``label_settings`` and ``publish_settings`` are that same
method under the names ``bridge`` and the CLI call). Defaults shared with other modules
come from ``defaults``.

Must not: talk to Serf or Kubernetes, or import a planner (``setup.cfg``'s
``config-is-low`` contract).
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from serfbridge import config_rules, defaults
from serfbridge.errors import ConfigError
from serfbridge.plan_settings import PlanSettings

DEFAULT_CONFIG = "/etc/serfbridge/config"
#: systemd's LoadCredential=serf-rpc-auth:... lands here when the unit uses it.
CREDENTIAL_NAME = "serf-rpc-auth"
#: Bounds of the files we read ourselves: the config file, the RPC key's files.
MAX_CONFIG_BYTES = 64 * 1024
MAX_SECRET_BYTES = 4096
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
_KEY_SHAPE = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")


@dataclass(frozen=True)
class Settings:
    rpc_addr: str = defaults.RPC_ADDR
    rpc_auth: str | None = field(default=None, repr=False)
    kubeconfig: str | None = None
    cluster: str = defaults.CLUSTER
    # Lowercased as kubelet does when it names its Node after the host.
    node_name: str = field(default_factory=lambda: socket.gethostname().split(".")[0].lower())
    label_prefix: str = defaults.LABEL_PREFIX
    log_format: str = "text"
    verbose: int = 0
    http_addr: str = defaults.HTTP_ADDR
    handler_socket: str = defaults.HANDLER_SOCKET
    #: Users the local serf agent may run as besides root and our own user: they may use
    #: the handler socket and own the agent's RPC port (``localpeers``).
    agent_users: frozenset[str] = frozenset()
    to_serf: bool = True
    to_k8s: bool = True
    resync: float = 60.0
    debounce: float = 0.2
    max_wait: float = 2.0
    failure_hold: float = 5.0
    tag_limit: int = defaults.TAG_LIMIT
    tag_allow: str = defaults.TAG_ALLOW
    replicas: int = defaults.REPLICAS
    publish_default: bool = True
    namespaces: frozenset[str] = frozenset()
    exclude_namespaces: frozenset[str] = frozenset()
    selector: str = ""
    cloud_name: str = defaults.CLOUD_NAME
    #: Imports (issue 15): Cloudy services -> Services and EndpointSlices, off by default.
    import_services: bool = False
    import_type: str = ".*"
    import_cidr: tuple[str, ...] = ()
    import_namespace: str = defaults.IMPORT_NAMESPACE

    def plan_settings(self, self_member: str | None) -> PlanSettings:
        """What the planners need of these settings: the one mapping from one to the other."""
        return PlanSettings(
            self_node=self.node_name,
            cluster=self.cluster,
            prefix=self.label_prefix,
            self_member=self_member,
            tag_allow=self.tag_allow,
            namespaces=self.namespaces,
            exclude_namespaces=self.exclude_namespaces,
            selector=self.selector,
            publish_default=self.publish_default,
            replicas=self.replicas,
            cloud_name=self.cloud_name,
            tag_limit=self.tag_limit,
            import_type=self.import_type,
            import_cidr=self.import_cidr,
            import_namespace=self.import_namespace,
        )

    # The names bridge.py and the CLI call; both directions plan from the same value.
    label_settings = plan_settings
    publish_settings = plan_settings


#: Setting name -> environment name (the table lives with the rules that name settings).
ENV_NAMES = config_rules.ENV_NAMES
_FLAG_ALIASES = {"cluster-name": "cluster", "import": "import_services"}
_BY_ENV = {env: name for name, env in ENV_NAMES.items()}


def read_config_file(path: str | None) -> dict[str, str]:
    """Setting name -> raw value from an env-style file; a missing default file is empty.

    Errors give the file, the line number and at most the key: never a value, which may
    be the RPC key on a line typed wrong.
    """
    if path is None:
        return {}
    try:
        text = read_text(path, what="config file", limit=MAX_CONFIG_BYTES)
    except FileNotFoundError:
        if path == DEFAULT_CONFIG:
            return {}
        raise ConfigError(f"config file {shown(path)} does not exist") from None
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        name, raw = _parse_line(line, f"{shown(path)}:{number}")
        if name is not None:
            values[name] = raw
    return values


def _parse_line(line: str, where: str) -> tuple[str | None, str]:
    line = line.strip()
    if not line or line.startswith("#"):
        return None, ""
    key, sep, raw = line.removeprefix("export ").partition("=")
    key = key.strip()
    if not sep:
        raise ConfigError(f"{where}: expected KEY=value (no '=' on the line)")
    name = _setting_name(key)
    if name is None:
        # Only a key that looks like one is shown: text before a stray '=' may be a secret.
        known = f" {key!r}" if _KEY_SHAPE.fullmatch(key) else ""
        raise ConfigError(f"{where}: unknown key{known} (use the env or flag names)")
    try:
        parts = shlex.split(raw, comments=True)
    except ValueError as exc:  # shlex's own text ("No closing quotation") holds no value
        raise ConfigError(f"{where}: {key}: {exc}") from None
    return name, " ".join(parts)


def read_text(path: str, *, what: str, limit: int) -> str:
    """A small UTF-8 text file, read at most ``limit`` bytes (``/dev/zero`` is one read).

    ConfigError when it is larger, not UTF-8, a directory or unreadable;
    FileNotFoundError is left to the caller (a missing file may be fine). Opened
    non-blocking so a FIFO without a writer reads as empty instead of hanging.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        raise ConfigError(f"cannot read {what} {shown(path)}: {_why(exc)}") from None
    try:
        with os.fdopen(fd, "rb") as file:
            data = file.read(limit + 1) or b""
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {shown(path)}: {_why(exc)}") from None
    if len(data) > limit:
        raise ConfigError(f"{what} {shown(path)} is larger than {limit} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {shown(path)} is not UTF-8 text (byte {exc.start})") from None


def shown(text: str) -> str:
    """``text`` (a path) fit for a one-line message: control characters escaped."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def _why(exc: Exception) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


def _setting_name(key: str) -> str | None:
    if key in _BY_ENV:
        return _BY_ENV[key]
    name = _FLAG_ALIASES.get(key, key).replace("-", "_")
    return name if name in ENV_NAMES else None


def convert(name: str, raw: str) -> object:
    """A raw string from the environment or the file -> the setting's type.

    The message names the setting, never the raw value (it may be a misplaced key).
    """
    default = getattr(Settings(node_name="x"), name)
    where = f"invalid {config_rules.setting_label(name)}"
    text = raw.strip().lower()
    if isinstance(default, bool):
        if text not in _TRUE + _FALSE:
            raise ConfigError(f"{where}: expected true or false (1/0, yes/no, on/off)")
        return text in _TRUE
    try:
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except ValueError:
        kind = "a whole number" if isinstance(default, int) else "a number"
        raise ConfigError(f"{where}: expected {kind}") from None
    if isinstance(default, frozenset):
        return frozenset(x for x in raw.replace(",", " ").split() if x)
    if isinstance(default, tuple):
        return split_list(raw)
    return raw


def split_list(raw: str) -> tuple[str, ...]:
    """A comma- (or space-) separated list, in order, empty items dropped."""
    return tuple(x for x in raw.replace(",", " ").split() if x)


def merge(explicit: Mapping[str, object], file_values: Mapping[str, str]) -> Settings:
    """Settings from explicit values (flags or env, already typed) over the file's,
    checked against every setting's rule (``config_rules``)."""
    values: dict[str, object] = {k: convert(k, v) for k, v in file_values.items()}
    values.update({k: v for k, v in explicit.items() if v is not None})
    auth = values.get("rpc_auth")
    if isinstance(auth, str):  # stripped here: the rules then check the key as used
        values["rpc_auth"] = auth.strip() or None
    try:
        settings = Settings(**values)  # type: ignore[arg-type]
    except TypeError as exc:
        raise ConfigError(f"invalid settings: {exc}") from exc
    config_rules.validate(settings)
    return settings


def credential_auth(env: Mapping[str, str] | None = None) -> str | None:
    """The RPC key from systemd's credentials directory, if the unit passes one."""
    env = os.environ if env is None else env
    directory = env.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return None
    path = str(Path(directory) / CREDENTIAL_NAME)
    try:
        return read_text(path, what="credential", limit=MAX_SECRET_BYTES).strip() or None
    except FileNotFoundError:
        return None


def read_secret_file(path: str, what: str) -> str | None:
    """The RPC key from a file such as a Kubernetes Secret (``--from-file`` adds a
    newline): stripped, bounded, never shown; None when the file is empty."""
    try:
        return read_text(path, what=what, limit=MAX_SECRET_BYTES).strip() or None
    except FileNotFoundError:
        raise ConfigError(f"{what} {shown(path)} does not exist") from None


#: A kubeconfig with embedded certificates is a few KiB; the loader reads it whole.
MAX_KUBECONFIG_BYTES = 1024 * 1024


def check_kubeconfig_files(paths: str) -> None:
    """Each file of a ``:``-separated kubeconfig list that exists must be a regular file
    of bounded size, before the loader reads it whole (``/dev/zero`` would never end)."""
    for path in filter(None, paths.split(os.pathsep)):
        try:
            info = os.stat(path)
        except FileNotFoundError:
            continue  # the loader says which file is missing
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read kubeconfig {path}: {exc}") from exc
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"kubeconfig {path} is not a regular file")
        if info.st_size > MAX_KUBECONFIG_BYTES:
            raise ConfigError(f"kubeconfig {path} is larger than {MAX_KUBECONFIG_BYTES} bytes")
