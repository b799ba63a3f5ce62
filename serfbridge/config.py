"""Settings: one frozen value built from flags, environment and the config file.

Precedence is flags, then environment, then ``/etc/serfbridge/config`` (env style:
``KEY=value`` lines, using the environment names such as ``SERFBRIDGE_CLUSTER=lab`` or
the flag names such as ``cluster-name=lab``), then defaults. The CLI parses flags and
environment with click; this module reads the file and merges it in for every value that
came from neither, and does so again on SIGHUP. The RPC auth key never appears in a
``repr`` or a log line.

Must not: talk to Serf or Kubernetes.
"""

from __future__ import annotations

import os
import shlex
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from serfbridge.errors import ConfigError

if TYPE_CHECKING:  # the planners load only for the commands that plan
    from serfbridge.plan_labels import LabelSettings
    from serfbridge.plan_publish import PublishSettings

#: The default --tag-allow, also plan_labels' (defined here, which must not import the
#: planners at load time): every tag but
#: Cloudy's bulky `services` list and our own `k8s`.
DEFAULT_TAG_ALLOW = r"(?!(services|k8s)$).*"

DEFAULT_CONFIG = "/etc/serfbridge/config"
#: systemd's LoadCredential=serf-rpc-auth:... lands here when the unit uses it.
CREDENTIAL_NAME = "serf-rpc-auth"


@dataclass(frozen=True)
class Settings:
    rpc_addr: str = "127.0.0.1:7373"
    rpc_auth: str | None = field(default=None, repr=False)
    kubeconfig: str | None = None
    cluster: str = "default"
    node_name: str = field(default_factory=lambda: socket.gethostname().split(".")[0])
    label_prefix: str = "serfbridge.io"
    log_format: str = "text"
    verbose: int = 0
    http_addr: str = "127.0.0.1:9473"
    handler_socket: str = "/run/serfbridge/handler.sock"
    #: Users the local serf agent may run as besides root and our own user: they may use
    #: the handler socket and own the agent's RPC port (``localpeers``).
    agent_users: frozenset[str] = frozenset()
    to_serf: bool = True
    to_k8s: bool = True
    resync: float = 60.0
    debounce: float = 0.2
    max_wait: float = 2.0
    failure_hold: float = 5.0
    tag_limit: int = 512
    tag_allow: str = DEFAULT_TAG_ALLOW
    replicas: int = 2
    publish_default: bool = True
    namespaces: frozenset[str] = frozenset()
    exclude_namespaces: frozenset[str] = frozenset()
    selector: str = ""
    cloud_name: str = "guifi"

    def label_settings(self, self_member: str | None) -> LabelSettings:
        from serfbridge.plan_labels import LabelSettings

        return LabelSettings(
            self_node=self.node_name,
            cluster=self.cluster,
            prefix=self.label_prefix,
            tag_allow=self.tag_allow,
            self_member=self_member,
        )

    def publish_settings(self, self_member: str | None) -> PublishSettings:
        from serfbridge.plan_publish import PublishSettings

        return PublishSettings(
            self_node=self.node_name,
            cluster=self.cluster,
            prefix=self.label_prefix,
            self_member=self_member,
            namespaces=self.namespaces,
            exclude_namespaces=self.exclude_namespaces,
            selector=self.selector,
            publish_default=self.publish_default,
            replicas=self.replicas,
            cloud_name=self.cloud_name,
            tag_limit=self.tag_limit,
        )


#: Setting name -> environment name. The flag is the setting name with '-' for '_'.
ENV_NAMES: dict[str, str] = {
    "rpc_addr": "SERF_RPC_ADDR",
    "rpc_auth": "SERF_RPC_AUTH",
    "kubeconfig": "KUBECONFIG",
    "cluster": "SERFBRIDGE_CLUSTER",
    "node_name": "SERFBRIDGE_NODE_NAME",
    "label_prefix": "SERFBRIDGE_LABEL_PREFIX",
    "log_format": "SERFBRIDGE_LOG_FORMAT",
    "http_addr": "SERFBRIDGE_HTTP_ADDR",
    "handler_socket": "SERFBRIDGE_HANDLER_SOCKET",
    "agent_users": "SERFBRIDGE_AGENT_USER",
    "to_serf": "SERFBRIDGE_TO_SERF",
    "to_k8s": "SERFBRIDGE_TO_K8S",
    "resync": "SERFBRIDGE_RESYNC",
    "debounce": "SERFBRIDGE_DEBOUNCE",
    "max_wait": "SERFBRIDGE_MAX_WAIT",
    "failure_hold": "SERFBRIDGE_FAILURE_HOLD",
    "tag_limit": "SERFBRIDGE_TAG_LIMIT",
    "tag_allow": "SERFBRIDGE_TAG_ALLOW",
    "replicas": "SERFBRIDGE_REPLICAS",
    "publish_default": "SERFBRIDGE_PUBLISH_DEFAULT",
    "namespaces": "SERFBRIDGE_NAMESPACES",
    "exclude_namespaces": "SERFBRIDGE_EXCLUDE_NAMESPACES",
    "selector": "SERFBRIDGE_SELECTOR",
    "cloud_name": "SERFBRIDGE_CLOUD_NAME",
}
_FLAG_ALIASES = {"cluster-name": "cluster"}
_BY_ENV = {env: name for name, env in ENV_NAMES.items()}


def read_config_file(path: str | None) -> dict[str, str]:
    """Setting name -> raw value from an env-style file; a missing default file is empty."""
    if path is None:
        return {}
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        if path == DEFAULT_CONFIG:
            return {}
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, raw = line.removeprefix("export ").partition("=")
        name = _setting_name(key.strip())
        if not sep or name is None:
            raise ConfigError(f"{path}:{number}: expected KEY=value with a known key, got {line!r}")
        try:
            parts = shlex.split(raw, comments=True)
        except ValueError as exc:
            raise ConfigError(f"{path}:{number}: {exc}") from exc
        values[name] = " ".join(parts)
    return values


def _setting_name(key: str) -> str | None:
    if key in _BY_ENV:
        return _BY_ENV[key]
    name = _FLAG_ALIASES.get(key, key).replace("-", "_")
    return name if name in ENV_NAMES else None


def convert(name: str, raw: str) -> object:
    """A raw string from the environment or the file -> the setting's type."""
    default = getattr(Settings(node_name="x"), name)
    try:
        if isinstance(default, bool):
            if raw.strip().lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(f"expected true or false, got {raw!r}")
            return raw.strip().lower() in ("1", "true", "yes", "on")
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, frozenset):
            return frozenset(x for x in raw.replace(",", " ").split() if x)
    except ValueError as exc:
        raise ConfigError(f"{ENV_NAMES[name]}: {exc}") from exc
    return raw


def merge(explicit: Mapping[str, object], file_values: Mapping[str, str]) -> Settings:
    """Settings from explicit values (flags or env, already typed) over the file's."""
    values: dict[str, object] = {k: convert(k, v) for k, v in file_values.items()}
    values.update({k: v for k, v in explicit.items() if v is not None})
    try:
        return Settings(**values)  # type: ignore[arg-type]
    except TypeError as exc:
        raise ConfigError(f"invalid settings: {exc}") from exc


def credential_auth(env: Mapping[str, str] | None = None) -> str | None:
    """The RPC key from systemd's credentials directory, if the unit passes one."""
    env = os.environ if env is None else env
    directory = env.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return None
    path = Path(directory) / CREDENTIAL_NAME
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read credential {path}: {exc.strerror}") from exc
