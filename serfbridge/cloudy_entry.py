"""Cloudy's avahi-ps entries as data: the entry, its sanitizer, its owner mark.

The bottom of the Cloudy codec (``cloudy`` re-exports all of it): ``Entry`` (one avahi-ps
service, every field the string that goes on the wire, keys ``s,d,m,i,p,e,t``,
``reference/cloudy-avahi-ps.md`` §1.2), ``TagChange`` (a ``tags`` request as a plan), the
strict sanitizer for what we publish (``make_entry``) and the ``t=k8s=...`` owner mark.

Pure: data in, data out. Must not: do I/O, log, compress or decode (``cloudy_codec``).
Errors: ``UsageError`` only (a value we were asked to publish would corrupt the list).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace

from serfbridge import defaults
from serfbridge.errors import UsageError
from serfbridge.printable import BIDI_CONTROLS

#: The Serf tag avahi-ps's serf plug uses (§1.2).
SERVICES_TAG = "services"
#: Wire keys in the order avahi-ps writes them.
WIRE_KEYS = ("s", "d", "m", "i", "p", "e", "t")
_OWNER_RE = re.compile(r"k8s=(?P<cluster>[^/]+)/(?P<ns>[^/]+)/(?P<svc>[^/]+)/(?P<port>[^/]+)")
_PORT_RE = re.compile(r"0*[0-9]{1,5}")
# avahi-ps puts the type unescaped into a grep pattern (§1.8), so keep regex syntax out.
_TYPE_RE = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class Entry:
    """One avahi-ps service; every field is the string that goes on the wire."""

    type: str = ""  # s
    description: str = ""  # d
    host: str = ""  # m
    ip: str = ""  # i
    port: str = ""  # p (a string: real tags carry "TEST")
    microcloud: str = ""  # e
    txt: str = ""  # t
    # The entry's JSON text as decoded from a tag ("" for an entry built here). Not an init
    # field, so ``replace()`` drops it: a changed entry is encoded from its fields again.
    raw: str = field(default="", init=False, compare=False, repr=False)

    @property
    def key(self) -> tuple[str, str]:
        """(type, port): what avahi-ps upserts and unpublishes by."""
        return (self.type, self.port)

    def to_wire(self) -> dict[str, str]:
        """The avahi-ps object, keys in wire order."""
        return dict(zip(WIRE_KEYS, field_values(self), strict=True))

    @classmethod
    def from_wire(cls, obj: Mapping[str, str]) -> Entry:
        """Build from a wire object; missing keys become ""."""
        return cls(*(obj.get(k, "") for k in WIRE_KEYS))

    def with_raw(self, raw: str) -> Entry:
        """This entry, remembering the JSON text it was decoded from."""
        copy = replace(self)
        object.__setattr__(copy, "raw", raw)
        return copy


FIELD_NAMES = tuple(f.name for f in fields(Entry) if f.init)


def field_values(entry: Entry) -> tuple[str, ...]:
    return tuple(getattr(entry, name) for name in FIELD_NAMES)


@dataclass(frozen=True)
class TagChange:
    """The ``tags`` request to make: set these, delete those. Empty means send nothing."""

    set_tags: Mapping[str, str] = field(default_factory=dict)
    delete: tuple[str, ...] = ()

    @property
    def noop(self) -> bool:
        """True when no ``tags`` call is needed."""
        return not self.set_tags and not self.delete


# --- sanitizing what we publish ---------------------------------------------------------


def make_entry(
    *,
    description: str,
    type: str,
    port: str | int,
    txt: str = "",
    host: str = "",
    ip: str = "",
    microcloud: str = "",
) -> Entry:
    """An entry of ours, sanitized like ``avahi-ps publish`` and then checked strictly."""
    entry = Entry(type, description, host, ip, str(port), microcloud, txt)
    return sanitize_entry(entry)


def sanitize_entry(entry: Entry) -> Entry:
    """``entry`` made safe to publish, or ``UsageError`` naming the field and character.

    Like avahi-ps (``echo $1 | sed 's/ /_/g'``), the description's leading and trailing
    whitespace is dropped and each inner run of whitespace becomes one ``_``. Nothing else
    is rewritten: avahi-ps turns ``&`` in txt into a space, which corrupts the list on the
    next read-modify-write (§1.8), so ``&`` and whitespace are refused instead, as are
    ``'``, ``"``, ``\\``, control and bidirectional control characters in every field.
    The port becomes its canonical number (``"030080"`` -> ``"30080"``) so (type, port)
    keys compare equal.
    """
    description = "_".join(entry.description.split())
    cleaned = replace(entry, description=description, port=_check_port(entry.port))
    for name, value in zip(FIELD_NAMES, field_values(cleaned), strict=True):
        _check_value(name, value)
    for name in ("type", "description"):
        if not getattr(cleaned, name):
            raise UsageError(f"{name} must not be empty")
    return cleaned


def _check_value(name: str, value: str) -> None:
    for char in value:
        reason = _forbidden_reason(name, char)
        if reason:
            raise UsageError(f"{name} must not contain {char!r} ({reason}); got {value!r}")


# (test of a field's name and one of its characters, why it is refused), first match wins.
_FORBIDDEN: tuple[tuple[Callable[[str, str], bool], str], ...] = (
    (lambda _, c: c in "'\"\\", "avahi-ps readers would corrupt the list"),
    (
        lambda name, c: c == "&" and name == "txt",
        "avahi-ps turns it into a space, which corrupts the list",
    ),
    (lambda _, c: c.isspace(), "whitespace corrupts avahi-ps lists"),
    (lambda _, c: unicodedata.category(c) in ("Cc", "Cs"), "control character"),
    (
        lambda _, c: c in BIDI_CONTROLS,
        "bidirectional control character: it reorders what the UI shows",
    ),
    (
        lambda name, c: name == "type" and not _TYPE_RE.fullmatch(c),
        "a type is letters, digits, '_', '.' and '-': avahi-ps greps for it",
    ),
)


def _forbidden_reason(name: str, char: str) -> str:
    return next((reason for test, reason in _FORBIDDEN if test(name, char)), "")


def _check_port(port: str) -> str:
    if _PORT_RE.fullmatch(port) and 1 <= int(port) <= defaults.MAX_PORT:
        return str(int(port))
    raise UsageError(f"port must be a number 1-65535, got {port!r}")


# --- ownership --------------------------------------------------------------------------


def owner_txt(*, cluster: str, namespace: str, service: str, port: str | int) -> str:
    """The ``t`` value marking an entry as serfbridge's: ``k8s=<cluster>/<ns>/<svc>/<port>``."""
    return f"k8s={cluster}/{namespace}/{service}/{port}"


def maybe_owner(entry: Entry) -> tuple[str, str, str, str] | None:
    """(cluster, namespace, service, port) from an owner ``t``, or None if it is not one."""
    match = _OWNER_RE.fullmatch(entry.txt)
    if match is None:
        return None
    return match["cluster"], match["ns"], match["svc"], match["port"]


def is_owned_by(entry: Entry, cluster: str) -> bool:
    """True when ``entry`` was published by serfbridge for ``cluster``."""
    owner = maybe_owner(entry)
    return owner is not None and owner[0] == cluster
