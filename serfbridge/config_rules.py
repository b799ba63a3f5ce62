"""The rule of every setting, checked once the layers are merged and before anything starts.

``config.merge`` calls ``validate`` for every command, so a bad value from a flag, the
environment or the config file alike ends the process at start with exit 2 and one line
naming the setting (``invalid --replicas (SERFBRIDGE_REPLICAS): ...``), instead of a
daemon that fails every pass and never trips systemd's ``RestartPreventExitStatus=2``.
A value that only a later pass would find wrong (a selector, the label prefix) is
checked here too, with the same code the planners use.

Messages name the setting and the rule; they show numbers as given but never a string
value: a misplaced RPC key must not end up in a journal (issue 13, defect 10).

Must not: read files, talk to Serf or Kubernetes, or import ``config`` or the planners
(the selector is parsed by ``selector``, the module the publish planner uses too).
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable
from typing import Protocol

from serfbridge import defaults
from serfbridge.errors import ConfigError
from serfbridge.errors import InvalidSetting as Invalid
from serfbridge.selector import parse_selector

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
    "import_services": "SERFBRIDGE_IMPORT",
    "import_type": "SERFBRIDGE_IMPORT_TYPE",
    "import_cidr": "SERFBRIDGE_IMPORT_CIDR",
    "import_namespace": "SERFBRIDGE_IMPORT_NAMESPACE",
}

#: The flags whose name is not the setting name with '-' for '_'.
FLAG_NAMES = {
    "cluster": "--cluster-name",
    "namespaces": "--namespace",
    "exclude_namespaces": "--exclude-namespace",
    "verbose": "-v",
    "agent_users": "--agent-user",
    "import_services": "--import",
}
#: Longest Unix socket path Linux takes (sun_path is 108 bytes, NUL included).
MAX_SOCKET_PATH = 107
MAX_AUTH_KEY = 1024
MAX_PATH = 4096
MAX_REGEX = 1000

_ASCII_CONTROLS = frozenset(map(chr, [*range(0x20), 0x7F]))  # C0 controls and DEL
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")  # label-value syntax
_USER = re.compile(r"[0-9]{1,10}|[a-z_][a-z0-9_-]{0,30}\$?")  # a uid, or a POSIX user name
_NAME_RULE = "1 to 63 letters, digits, '-', '_' or '.', alphanumeric at both ends"
_HOST = re.compile(r"[^\s\x00-\x1f\x7f\[\]]*|\[[0-9A-Fa-f:.%a-zA-Z]+\]")


def flag_name(name: str) -> str:
    return FLAG_NAMES.get(name, "--" + name.replace("_", "-"))


def setting_label(name: str) -> str:
    """``--replicas (SERFBRIDGE_REPLICAS)``: how errors name a setting."""
    env = ENV_NAMES.get(name)
    return f"{flag_name(name)} ({env})" if env else flag_name(name)


class Checked(Protocol):
    """What ``validate`` reads by name (``config.Settings`` fits; every field by ``vars``)."""

    @property
    def debounce(self) -> float: ...
    @property
    def max_wait(self) -> float: ...


def validate(settings: Checked) -> None:
    """ConfigError for the first broken rule, in field order; the RPC key comes stripped."""
    for name, value in vars(settings).items():
        try:
            _check_text(value)
            rule = _RULES.get(name)
            if rule is not None:
                rule(value)
        except Invalid as exc:
            raise ConfigError(f"invalid {setting_label(name)}: {exc}") from None
    if settings.max_wait < settings.debounce:
        raise ConfigError(
            f"invalid {setting_label('max_wait')}: must not be shorter than "
            f"{setting_label('debounce')} ({settings.max_wait:g} < {settings.debounce:g})"
        )


def _check_text(value: object) -> None:
    """Every string must be encodable: undecodable bytes in the environment become
    surrogates, which would only fail later, inside msgpack or the API client."""
    texts = value if isinstance(value, frozenset | tuple) else (value,)
    for text in texts:
        if isinstance(text, str):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise Invalid("is not valid UTF-8") from None


# --- the rules ------------------------------------------------------------------------


def number(
    low: float, high: float, *, integer: bool = False, above: bool = False
) -> Callable[[object], None]:
    """A finite number in [low, high] (or (low, high] with ``above``)."""

    def check(value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise Invalid("must be a number")
        if integer and not isinstance(value, int):
            raise Invalid("must be a whole number")
        if not math.isfinite(value):
            raise Invalid(f"must be a finite number, got {value}")
        too_low = value <= low if above else value < low
        if too_low or value > high:
            bound = f"more than {low:g}" if above else f"at least {low:g}"
            raise Invalid(f"must be {bound} and at most {high:g}, got {value:g}")

    return check


def _address(value: object) -> None:
    host, sep, port = str(value).rpartition(":")
    if (
        not sep
        or not port.isascii()
        or not port.isdigit()
        or not 0 < int(port) <= defaults.MAX_PORT
    ):
        raise Invalid("must be host:port with a port from 1 to 65535")
    if not _HOST.fullmatch(host):
        raise Invalid("has a host with spaces, control characters or stray brackets")


def _rpc_auth(value: object) -> None:
    if value is None:
        return
    text = str(value)
    if len(text) > MAX_AUTH_KEY:
        raise Invalid(f"is longer than {MAX_AUTH_KEY} characters")
    if any(not c.isprintable() for c in text):
        raise Invalid("must be one line of printable characters")  # the key is not shown


def _path(limit: int, *, empty_ok: bool = False) -> Callable[[object], None]:
    def check(value: object) -> None:
        if value is None:
            return
        text = str(value)
        if not text and not empty_ok:
            raise Invalid("must not be empty")
        if any(c in _ASCII_CONTROLS for c in text):
            raise Invalid("must not contain control characters")
        if len(text.encode("utf-8")) > limit:
            raise Invalid(f"is longer than {limit} bytes")

    return check


def _pattern(regex: re.Pattern[str], rule: str) -> Callable[[object], None]:
    def check(value: object) -> None:
        if not regex.fullmatch(str(value)):
            raise Invalid(f"must be {rule}")

    return check


def _each(regex: re.Pattern[str], rule: str) -> Callable[[object], None]:
    single = _pattern(regex, rule)

    def check(value: object) -> None:
        for item in sorted(value):  # type: ignore[call-overload]
            single(item)

    return check


def _label_prefix(value: object) -> None:
    text = str(value)
    if len(text) > defaults.DNS_NAME_MAX or not _DNS_SUBDOMAIN.fullmatch(text):
        raise Invalid("must be a DNS subdomain (lowercase letters, digits, '-' and '.')")


def _node_name(value: object) -> None:
    text = str(value)
    if len(text) > defaults.DNS_NAME_MAX or not _DNS_SUBDOMAIN.fullmatch(text):
        raise Invalid("must be a Kubernetes node name (a lowercase DNS subdomain)")


def _cidrs(value: object) -> None:
    for cidr in value if isinstance(value, tuple) else ():
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise Invalid("must be CIDRs such as 10.0.0.0/8 or 2001:db8::/32") from None


def _regex(value: object) -> None:
    text = str(value)
    if len(text) > MAX_REGEX:
        raise Invalid(f"is longer than {MAX_REGEX} characters")
    try:
        re.compile(text)  # matched here, by Python, against gossiped tag keys
    except re.error as exc:
        raise Invalid(f"is not a valid regex: {exc}") from None


def _selector(value: object) -> None:
    if not str(value).strip():
        return
    try:
        parse_selector(str(value))
    except ConfigError:
        raise Invalid("must be a label selector of k=v, k!=v, k and !k terms") from None


def _choice(*allowed: str) -> Callable[[object], None]:
    def check(value: object) -> None:
        if value not in allowed:
            raise Invalid(f"must be one of {', '.join(allowed)}")

    return check


def _flag(value: object) -> None:
    if not isinstance(value, bool):
        raise Invalid("must be true or false")


_RULES: dict[str, Callable[[object], None]] = {
    "rpc_addr": _address,
    "rpc_auth": _rpc_auth,
    "kubeconfig": _path(MAX_PATH, empty_ok=True),  # empty: the default, as for kubectl
    "cluster": _pattern(_NAME, _NAME_RULE),
    "node_name": _node_name,
    "label_prefix": _label_prefix,
    "log_format": _choice("text", "json"),
    "verbose": number(0, 100, integer=True),
    "http_addr": _address,
    "handler_socket": _path(MAX_SOCKET_PATH),
    "to_serf": _flag,
    "to_k8s": _flag,
    "resync": number(1, 86400),
    "debounce": number(0, 60),
    "max_wait": number(0, 3600, above=True),
    "failure_hold": number(0, 3600),
    "tag_limit": number(128, 65535, integer=True),
    "tag_allow": _regex,
    "replicas": number(1, 1000, integer=True),
    "publish_default": _flag,
    "namespaces": _each(_DNS_LABEL, "namespace names (lowercase DNS labels)"),
    "exclude_namespaces": _each(_DNS_LABEL, "namespace names (lowercase DNS labels)"),
    "selector": _selector,
    "cloud_name": _pattern(_DNS_LABEL, "a lowercase DNS label (letters, digits and '-')"),
    "agent_users": _each(_USER, "user names or numeric uids"),
    "import_services": _flag,
    "import_type": _regex,
    "import_cidr": _cidrs,
    "import_namespace": _pattern(_DNS_LABEL, "a namespace name (a lowercase DNS label)"),
}

#: What each setting accepts, in words: docs/configuration.md renders this table.
RULE_TEXT: dict[str, str] = {
    "rpc_addr": "`host:port`, port 1-65535 (`[v6]:port` for IPv6; empty host: 127.0.0.1)",
    "rpc_auth": "one line, at most 1024 characters; surrounding whitespace is stripped "
    "(also from `--rpc-auth-file` and the credential, each read up to 4096 bytes)",
    "kubeconfig": "a path (or `:`-separated list) without control characters; each file "
    "a regular file of at most 1 MiB",
    "cluster": _NAME_RULE,
    "node_name": "a Kubernetes node name: lowercase DNS subdomain, at most 253 characters",
    "label_prefix": "a lowercase DNS subdomain, at most 253 characters",
    "log_format": "`text` or `json`",
    "http_addr": "`host:port`, port 1-65535",
    "handler_socket": f"a path of at most {MAX_SOCKET_PATH} bytes, no control characters",
    "to_serf": "true or false (1/0, yes/no, on/off)",
    "to_k8s": "true or false",
    "resync": "seconds, 1 to 86400",
    "debounce": "seconds, 0 to 60",
    "max_wait": "seconds, more than 0 and at most 3600, and not less than the debounce",
    "failure_hold": "seconds, 0 to 3600",
    "tag_limit": "bytes, a whole number from 128 to 65535",
    "tag_allow": f"a Python regex (matched here, on gossiped keys), at most {MAX_REGEX} characters",
    "replicas": "a whole number from 1 to 1000",
    "publish_default": "true or false",
    "namespaces": "namespace names (lowercase DNS labels), comma- or space-separated",
    "exclude_namespaces": "namespace names (lowercase DNS labels)",
    "selector": "`k=v`, `k==v`, `k!=v`, `k` and `!k` terms, comma-separated",
    "cloud_name": "a lowercase DNS label",
    "agent_users": "user names or numeric uids that exist on this host (checked at start); "
    "root and the daemon's own user are always trusted",
    "import_services": "true or false",
    "import_type": f"a Python regex, full match on the Cloudy type, at most {MAX_REGEX} characters",
    "import_cidr": "CIDRs (IPv4 or IPv6), comma-separated; empty: any usable IP",
    "import_namespace": "a namespace name (a lowercase DNS label)",
}
