"""Typed values of the Serf RPC protocol: members, stream records, replies.

The protocol core (``protocol.py``) builds these from raw msgpack objects with the
``parse_*`` functions below, which check every field's type, so nothing untyped and no
``Any`` leaves the core. A wrong shape raises ``RemoteProtocolError`` (the peer broke the
protocol); they never raise anything else.

Pure: no I/O. Field names follow Serf's Go structs (``reference/serf-rpc.md`` §3-§5).
"""

from __future__ import annotations

import ipaddress
import operator
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

from serfbridge import member_events
from serfbridge.errors import RemoteProtocolError

# --- raw-value checks ------------------------------------------------------------------


def _map(obj: object, what: str) -> Mapping[str, object]:
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise RemoteProtocolError(
            f"{what}: expected a map with string keys, got {type(obj).__name__}"
        )
    return obj


def _str(m: Mapping[str, object], key: str, *, what: str) -> str:
    value = m.get(key, "")
    if not isinstance(value, str):
        raise RemoteProtocolError(f"{what}.{key}: expected a string, got {type(value).__name__}")
    return value


def _int(m: Mapping[str, object], key: str, *, what: str) -> int:
    value = m.get(key, 0)
    if not isinstance(value, int) or isinstance(value, bool):
        raise RemoteProtocolError(f"{what}.{key}: expected an integer, got {type(value).__name__}")
    return value


def _bool(m: Mapping[str, object], key: str, *, what: str) -> bool:
    value = m.get(key, False)
    if not isinstance(value, bool):
        raise RemoteProtocolError(f"{what}.{key}: expected a boolean, got {type(value).__name__}")
    return value


def _bytes(m: Mapping[str, object], key: str, *, what: str) -> bytes:
    # An empty []byte comes back as nil (§1); str is tolerated like the agent does.
    value = m.get(key)
    if value is None:
        return b""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    raise RemoteProtocolError(f"{what}.{key}: expected bytes, got {type(value).__name__}")


def _str_map(obj: object, what: str) -> dict[str, str]:
    if obj is None:
        return {}
    m = _map(obj, what)
    if not all(isinstance(v, str) for v in m.values()):
        raise RemoteProtocolError(f"{what}: expected string values")
    return {k: str(v) for k, v in m.items()}


def _list(obj: object, what: str) -> list[object]:
    if obj is None:
        return []
    if not isinstance(obj, list):
        raise RemoteProtocolError(f"{what}: expected a list, got {type(obj).__name__}")
    return obj


# --- members ---------------------------------------------------------------------------


class Member(NamedTuple):
    """One Serf member as ``members`` and member events report it.

    Immutable like the other models, but a named tuple rather than a frozen dataclass:
    ``members`` builds one per member on every call, and a tuple is several times cheaper
    to make (``bench/bench_rpc_members.py``).
    """

    name: str
    addr: str  # the IP in text form; the wire carries 4 or 16 raw bytes
    port: int
    tags: Mapping[str, str]
    status: str
    protocol: tuple[int, int, int] = (0, 0, 0)  # memberlist min, max, cur
    delegate: tuple[int, int, int] = (0, 0, 0)  # serf min, max, cur

    def to_json(self) -> dict[str, object]:
        """The shape `serfbridge members --json` prints (like `serf members -format json`)."""
        return {
            "name": self.name,
            "addr": f"{self.addr}:{self.port}"
            if ":" not in self.addr
            else f"[{self.addr}]:{self.port}",
            "port": self.port,
            "tags": dict(self.tags),
            "status": self.status,
            "protocol": {
                "min": self.protocol[0],
                "max": self.protocol[1],
                "version": self.protocol[2],
            },
        }


_ADDR_TEXT: dict[bytes, str] = {}  # a cluster has few distinct addresses; formatting is slow
_ADDR_TEXT_MAX = 4096  # addresses remembered; a hostile churn of them cannot grow it further


def _addr(raw: object, what: str) -> str:
    if type(raw) is bytes and len(raw) in (4, 16):
        text = _ADDR_TEXT.get(raw)
        if text is None:
            text = str(ipaddress.ip_address(raw))
            if len(_ADDR_TEXT) < _ADDR_TEXT_MAX:
                _ADDR_TEXT[raw] = text
        return text
    if raw is None or raw == b"":
        return ""
    raise RemoteProtocolError(f"{what}.Addr: expected 4 or 16 bytes")


_ONLY_STR = {str}
_ONLY_INT = {int}
# The 11 keys the agent always sends (§3), in the order itemgetter returns them.
_MEMBER_KEYS = (
    "Addr",
    "DelegateCur",
    "DelegateMax",
    "DelegateMin",
    "Name",
    "Port",
    "ProtocolCur",
    "ProtocolMax",
    "ProtocolMin",
    "Status",
    "Tags",
)
_MEMBER_TYPES = (bytes, int, int, int, str, int, int, int, int, str, dict)
_member_values = operator.itemgetter(*_MEMBER_KEYS)


def parse_member(obj: object) -> Member:
    # The hot path of `members` (once per member per call). The common, well-formed shape
    # is checked with a few C-level calls; anything else takes the careful path.
    if type(obj) is dict and len(obj) == len(_MEMBER_KEYS):
        try:
            values = _member_values(obj)
        except KeyError:
            values = ()
        if tuple(map(type, values)) == _MEMBER_TYPES:
            addr, dcur, dmax, dmin, name, port, pcur, pmax, pmin, status, tags = values
            if (set(map(type, tags)) | set(map(type, tags.values()))) <= _ONLY_STR:
                return tuple.__new__(
                    Member,
                    (
                        name,
                        _addr(addr, "Member"),
                        port,
                        tags,
                        status,
                        (pmin, pmax, pcur),
                        (dmin, dmax, dcur),
                    ),
                )
    return _parse_member_carefully(obj)


def _parse_member_carefully(obj: object) -> Member:
    if type(obj) is not dict:
        raise RemoteProtocolError(f"Member: expected a map, got {type(obj).__name__}")
    get = obj.get
    name, status, port = get("Name", ""), get("Status", ""), get("Port", 0)
    protocol = (get("ProtocolMin", 0), get("ProtocolMax", 0), get("ProtocolCur", 0))
    delegate = (get("DelegateMin", 0), get("DelegateMax", 0), get("DelegateCur", 0))
    if {type(name), type(status)} != _ONLY_STR or not set(
        map(type, (port, *protocol, *delegate))
    ) <= _ONLY_INT:
        raise RemoteProtocolError("Member: Name/Status must be strings, Port and versions integers")
    tags = get("Tags")
    if (
        type(tags) is not dict
        or not (set(map(type, tags)) | set(map(type, tags.values()))) <= _ONLY_STR
    ):
        tags = _str_map(tags, "Member.Tags")
    return Member(name, _addr(get("Addr"), "Member"), port, tags, status, protocol, delegate)


def parse_members(obj: object) -> tuple[Member, ...]:
    body = _map(obj, "members reply")
    return tuple(parse_member(x) for x in _list(body.get("Members"), "Members"))


# --- stream records (§4, §5) -----------------------------------------------------------

MEMBER_EVENTS = frozenset(member_events.MEMBER_EVENTS)


@dataclass(frozen=True)
class MemberEvent:
    event: str  # one of MEMBER_EVENTS
    members: tuple[Member, ...]


@dataclass(frozen=True)
class UserEvent:
    name: str
    payload: bytes
    ltime: int
    coalesce: bool


@dataclass(frozen=True)
class QueryEvent:
    """A query seen on a stream; answer it with ``respond`` on the same connection."""

    id: int
    name: str
    payload: bytes
    ltime: int


@dataclass(frozen=True)
class QueryRecord:
    """One record of a ``query`` we sent: ``ack``, ``response`` or the final ``done``."""

    type: str
    from_node: str
    payload: bytes


@dataclass(frozen=True)
class LogLine:
    line: str


@dataclass(frozen=True)
class Reconnected:
    """Not from the agent: the client re-dialled and re-subscribed; events may be missed."""


StreamItem = MemberEvent | UserEvent | QueryEvent | QueryRecord | LogLine | Reconnected


def parse_event_record(obj: object) -> MemberEvent | UserEvent | QueryEvent:
    m = _map(obj, "event record")
    event = _str(m, "Event", what="event record")
    if event in MEMBER_EVENTS:
        members = tuple(parse_member(x) for x in _list(m.get("Members"), "Members"))
        return MemberEvent(event=event, members=members)
    if event == "user":
        return UserEvent(
            name=_str(m, "Name", what="user event"),
            payload=_bytes(m, "Payload", what="user event"),
            ltime=_int(m, "LTime", what="user event"),
            coalesce=_bool(m, "Coalesce", what="user event"),
        )
    if event == "query":
        return QueryEvent(
            id=_int(m, "ID", what="query event"),
            name=_str(m, "Name", what="query event"),
            payload=_bytes(m, "Payload", what="query event"),
            ltime=_int(m, "LTime", what="query event"),
        )
    raise RemoteProtocolError(f"unknown stream event type {event!r}")


def parse_query_record(obj: object) -> QueryRecord:
    m = _map(obj, "query record")
    kind = _str(m, "Type", what="query record")
    if kind not in ("ack", "response", "done"):
        raise RemoteProtocolError(f"unknown query record type {kind!r}")
    return QueryRecord(
        type=kind,
        from_node=_str(m, "From", what="query record"),
        payload=_bytes(m, "Payload", what="query"),
    )


def parse_log_record(obj: object) -> LogLine:
    return LogLine(line=_str(_map(obj, "log record"), "Log", what="log record"))


# --- reply bodies ----------------------------------------------------------------------


@dataclass(frozen=True)
class Coordinate:
    vec: tuple[float, ...]
    error: float
    adjustment: float
    height: float


def _float(m: Mapping[str, object], key: str, *, what: str) -> float:
    value = m.get(key, 0.0)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RemoteProtocolError(f"{what}.{key}: expected a number")
    return float(value)


def parse_coordinate(obj: object) -> Coordinate | None:
    m = _map(obj, "coordinate reply")
    if not _bool(m, "Ok", what="coordinate reply"):
        return None
    c = _map(m.get("Coord"), "Coord")
    vec = _list(c.get("Vec"), "Coord.Vec")
    if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in vec):
        raise RemoteProtocolError("Coord.Vec: expected numbers")
    return Coordinate(
        vec=tuple(float(x) for x in vec),  # type: ignore[arg-type]
        error=_float(c, "Error", what="Coord"),
        adjustment=_float(c, "Adjustment", what="Coord"),
        height=_float(c, "Height", what="Coord"),
    )


def parse_stats(obj: object) -> dict[str, dict[str, str]]:
    m = _map(obj, "stats reply")
    return {k: _str_map(v, f"stats.{k}") for k, v in m.items()}


def parse_join(obj: object) -> int:
    return _int(_map(obj, "join reply"), "Num", what="join reply")


ReplyBody = tuple[Member, ...] | Coordinate | dict[str, dict[str, str]] | int | None
