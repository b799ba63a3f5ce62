"""Cloudy's avahi-ps ``services`` tag: codec, sanitizer and read-modify-write planning.

Role: the one place that knows the byte format avahi-ps's serf plug writes into the Serf
tag ``services`` (``reference/cloudy-avahi-ps.md`` §1.2): ``base64(bzip2 -9("[" + objects
+ "]\\n"))``, each object compact JSON with the keys ``s,d,m,i,p,e,t`` in that order and
every value a string. Encoding our entries gives exactly the bytes avahi-ps would write;
decoding is tolerant of what Cloudy nodes really gossip (legacy single quotes, missing
keys, non-string values) and reports per-entry problems instead of hiding the list.

Peers' values are hostile data. A decode is bounded in input size, decompressed bytes,
items and problem lines, so a bzip2 bomb costs one error, not the bridge's CPU or memory;
results are cached by value (the raw tag string), so a value seen on every pass is
decoded once. Each decoded entry keeps its JSON text (``Entry.raw``): entries we do not own
are re-encoded byte for byte from it, never re-validated as ours.

Callers: ``cli.py`` (``services``, ``publish``, ``unpublish``), ``plan_publish.py`` and the
daemon (owned entries, the tag change to make), ``status``.

Must not: do I/O, log, or talk to the agent. Every function takes data and returns data
(a ``TagChange`` is a plan; someone else applies it). Errors raised here are only
``ServicesDecodeError`` (a peer's tag cannot be read), ``UsageError`` (a value we were
asked to publish would corrupt the list) and ``BudgetError`` (the tag set would not fit).
"""

from __future__ import annotations

import base64
import binascii
import bz2
import functools
import json
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Protocol

from serfbridge import bounded
from serfbridge.errors import BudgetError, ServicesDecodeError, UsageError
from serfbridge.printable import BIDI_CONTROLS, valid_text
from serfbridge.rpc.budget import DEFAULT_TAG_LIMIT, encoded_tags_size, merged_tags

#: The Serf tag avahi-ps's serf plug uses (§1.2).
SERVICES_TAG = "services"
#: Wire keys in the order avahi-ps writes them.
WIRE_KEYS = ("s", "d", "m", "i", "p", "e", "t")
#: Cap on a peer's tag value: Serf's tags fit in 512 bytes (2048 with forks), so a value
#: this long is hostile and is refused before anything is decoded or cached.
MAX_ENCODED_CHARS = 16 * 1024
#: Cap on the decompressed size of a peer's tag: a bzip2 bomb must not eat memory. A real
#: list that fits a 2048-byte budget decompresses to a few KiB.
MAX_DECODED_BYTES = 32 * 1024
#: Cap on the items of one list: 2048 bytes of tags hold at most ~150 real entries.
MAX_ITEMS = 256
#: Problem lines kept per list; the rest are summed up in one more line.
MAX_PROBLEMS = 8
#: Decode results kept by value, weighed by decoded size: bounds the cache's memory.
CACHE_WEIGHT = 8 << 20
#: Only `search` rows of members with this status are listed (avahi-ps: -status=alive).
ALIVE = "alive"

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
        return dict(zip(WIRE_KEYS, _values(self), strict=True))

    @classmethod
    def from_wire(cls, obj: Mapping[str, str]) -> Entry:
        """Build from a wire object; missing keys become ""."""
        return cls(*(obj.get(k, "") for k in WIRE_KEYS))

    def with_raw(self, raw: str) -> Entry:
        """This entry, remembering the JSON text it was decoded from."""
        copy = replace(self)
        object.__setattr__(copy, "raw", raw)
        return copy


_FIELD_NAMES = tuple(f.name for f in fields(Entry) if f.init)


def _values(entry: Entry) -> tuple[str, ...]:
    return tuple(getattr(entry, name) for name in _FIELD_NAMES)


@dataclass(frozen=True)
class DecodeResult:
    """A decoded list: the usable entries and one message per entry problem."""

    entries: tuple[Entry, ...]
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class TagChange:
    """The ``tags`` request to make: set these, delete those. Empty means send nothing."""

    set_tags: Mapping[str, str] = field(default_factory=dict)
    delete: tuple[str, ...] = ()

    @property
    def noop(self) -> bool:
        """True when no ``tags`` call is needed."""
        return not self.set_tags and not self.delete


class MemberLike(Protocol):
    """What ``decode_members`` needs of a member (``rpc.models.Member`` fits)."""

    @property
    def name(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def tags(self) -> Mapping[str, str]: ...


MemberInput = MemberLike | tuple[str, str, Mapping[str, str]]

# --- encoding ---------------------------------------------------------------------------


def encode_services(entries: Iterable[Entry]) -> str:
    """The ``services`` tag value avahi-ps would write for ``entries``, in this order.

    Sanitized values need no JSON escaping, so the bytes are avahi-ps's exactly. An entry
    read from a tag is written back as the JSON text it was read from, byte for byte
    (another member's data never fails our write). For an entry built here, ``'`` is
    refused, because every reader turns it into ``"`` and loses the list.
    """
    objects = [_encode_object(e) for e in entries]
    try:
        raw = ("[" + ",".join(objects) + "]\n").encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UsageError(f"services list is not valid Unicode text: {exc}") from exc
    return base64.b64encode(bz2.compress(raw, 9)).decode("ascii")


def _encode_object(entry: Entry) -> str:
    return entry.raw or _entry_json(entry)


@functools.lru_cache(maxsize=4096)
def _entry_json(entry: Entry) -> str:
    """An entry of ours as JSON, kept by value: placement encodes the same entries in many
    trial lists. Called only for entries without a raw text, so equal means same JSON."""
    for name, value in zip(_FIELD_NAMES, _values(entry), strict=True):
        if "'" in value:
            raise UsageError(f"{name} must not contain \"'\" (readers read it as '\"'): {value!r}")
    return json.dumps(entry.to_wire(), separators=(",", ":"), ensure_ascii=False)


def forget_encodings() -> None:
    """Drop the per-entry JSON memo (benchmarks and tests: a pass from scratch)."""
    _entry_json.cache_clear()


# --- decoding ---------------------------------------------------------------------------


def decode_services(value: str) -> list[Entry]:
    """The usable entries of a ``services`` tag value; see ``decode_services_report``."""
    return list(decode_services_report(value).entries)


def decode_services_report(value: str) -> DecodeResult:
    """Decode a peer's ``services`` value like avahi-ps's readers, but tolerantly.

    Raises ``ServicesDecodeError`` when the whole value is unreadable (bad base64 or
    bzip2, not UTF-8, not JSON, not a list) or over a bound (``MAX_ENCODED_CHARS``,
    ``MAX_DECODED_BYTES``, ``MAX_ITEMS``). Inside the list, a non-object item is skipped;
    a missing key reads as ""; a null, number or boolean is kept as its JSON text ("665",
    "true"; null as ""); a nested list/object skips the entry. Each is one problem line,
    at most ``MAX_PROBLEMS`` and one line counting the rest. Cached by value.
    """
    if len(value) > MAX_ENCODED_CHARS:
        raise ServicesDecodeError(
            f"services tag is {len(value)} characters long, over {MAX_ENCODED_CHARS}"
        )
    cached = _CACHE.get(value)
    if cached is None:
        cached = _decode_uncached(value)
        _CACHE.put(value, cached)
    if isinstance(cached, str):
        raise ServicesDecodeError(cached)
    return cached


def _decode_uncached(value: str) -> DecodeResult | str:
    """The result, or the message of the decode error (cached as text, not as an exception:
    re-raising one instance would grow its traceback at every pass)."""
    try:
        text = _unpack(value).replace("'", '"')  # legacy lists (§1.2): readers sed ' to "
        items = _split_list(text)
    except ServicesDecodeError as exc:
        return str(exc)
    entries: list[Entry] = []
    problems: list[str] = []
    for index, (item, raw) in enumerate(items, start=1):
        entry = _decode_item(item, f"entry {index}", problems)
        if entry is not None:
            entries.append(entry.with_raw(raw))
    if len(problems) > MAX_PROBLEMS:
        problems[MAX_PROBLEMS:] = [f"and {len(problems) - MAX_PROBLEMS} more problems"]
    return DecodeResult(tuple(entries), tuple(problems))


def _split_list(text: str) -> list[tuple[object, str]]:
    try:
        return bounded.split_json_list(text, max_items=MAX_ITEMS)
    except bounded.NotAList as exc:
        raise ServicesDecodeError(f"services tag is not a JSON list (got {exc.kind})") from exc
    except bounded.TooManyItems as exc:
        raise ServicesDecodeError(f"services tag has more than {MAX_ITEMS} entries") from exc
    except ValueError as exc:
        raise ServicesDecodeError(f"services tag is not valid JSON: {exc}") from exc


def _weight(value: str, result: DecodeResult | str) -> int:
    """Roughly the bytes a cached result holds (an entry object is ~400 bytes)."""
    if isinstance(result, str):
        return len(value) + len(result)
    return len(value) + sum(len(e.raw) + 400 for e in result.entries)


_CACHE: bounded.WeightedCache[DecodeResult | str] = bounded.WeightedCache(CACHE_WEIGHT, _weight)


def _unpack(value: str) -> str:
    """base64 -d | bunzip2, as text."""
    try:
        packed = base64.b64decode("".join(value.split()).encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError) as exc:
        raise ServicesDecodeError(f"services tag is not valid base64: {exc}") from exc
    raw = _bunzip2(packed)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ServicesDecodeError(f"services tag is not UTF-8 text: {exc}") from exc


def _bunzip2(packed: bytes) -> bytes:
    """Decompress concatenated streams like bunzip2, at most MAX_DECODED_BYTES."""
    if not packed:
        raise ServicesDecodeError("services tag is empty")
    out = b""
    while packed:
        decompressor = bz2.BZ2Decompressor()
        try:
            out += decompressor.decompress(packed, MAX_DECODED_BYTES + 1 - len(out))
        except (OSError, ValueError, EOFError) as exc:
            raise ServicesDecodeError(f"services tag is not bzip2 data: {exc}") from exc
        if len(out) > MAX_DECODED_BYTES:
            raise ServicesDecodeError(f"services tag expands beyond {MAX_DECODED_BYTES} bytes")
        if not decompressor.eof:
            raise ServicesDecodeError("services tag is not bzip2 data: truncated stream")
        packed = decompressor.unused_data
        if not packed.startswith(b"BZh"):
            break  # bunzip2 ignores trailing garbage after a stream, with a warning
    return out


def _decode_item(item: object, where: str, problems: list[str]) -> Entry | None:
    if not isinstance(item, dict):
        problems.append(f"{where}: not a JSON object (got {_json_kind(item)}), skipped")
        return None
    for key in WIRE_KEYS:
        if _json_kind(item.get(key)) in ("object", "list"):
            problems.append(f"{where}: {key!r} is a JSON {_json_kind(item[key])}, skipped")
            return None
    wire: dict[str, str] = {}
    for key in WIRE_KEYS:
        value = item.get(key)
        wire[key] = value if isinstance(value, str) else "" if value is None else json.dumps(value)
        if key not in item:
            problems.append(f"{where}: missing {key!r}, read as ''")
        elif not isinstance(value, str):
            problems.append(
                f"{where}: {key!r} is a JSON {_json_kind(value)}, read as {wire[key]!r}"
            )
    return Entry.from_wire(wire)


_json_kind = bounded.json_kind


# --- search (what avahi-ps search prints) -----------------------------------------------


def decode_members(members: Iterable[MemberInput]) -> tuple[list[dict[str, str]], list[str]]:
    """``avahi-ps search`` rows of the alive members, plus warnings naming bad members.

    Rows are ``{"node_id": <member name>, "s": ..., ..., "t": ...}`` in member order, then
    list order (avahi-ps prints them reversed; the set is the same). A member whose tag
    cannot be decoded contributes no rows and one warning; entry problems give one warning
    each. Members that are not alive, or have no ``services`` tag, are silently skipped.
    """
    rows: list[dict[str, str]] = []
    warnings: list[str] = []
    for member in members:
        name, status, tags = _member_fields(member)
        if status != ALIVE or SERVICES_TAG not in tags:
            continue
        try:
            result = decode_services_report(tags[SERVICES_TAG])
        except ServicesDecodeError as exc:
            warnings.append(f"member {name!r}: {exc}; its services are skipped")
            continue
        warnings.extend(f"member {name!r}: {problem}" for problem in result.problems)
        rows.extend({"node_id": name, **entry.to_wire()} for entry in result.entries)
    return rows, warnings


def _member_fields(member: MemberInput) -> tuple[str, str, Mapping[str, str]]:
    # rpc.models.Member is a named tuple too: tell it apart from a plain 3-tuple.
    if isinstance(member, tuple) and not hasattr(member, "_fields"):
        return member
    return member.name, member.status, member.tags  # type: ignore[union-attr]


def filter_rows(
    rows: Iterable[Mapping[str, str]], *, service_type: str | None = None, host: str | None = None
) -> list[dict[str, str]]:
    """The rows matching both filters (None or "" = no filter); avahi-ps ignores them.

    ``service_type`` matches ``s`` exactly (Cloudy's UI tabs are case-sensitive).
    ``host`` matches, case-insensitively, the ``m`` host, its first label
    (``cloudy-master`` for ``cloudy-master.guifi.local``), the ``node_id`` or the ``i`` ip.
    """
    return [
        dict(row)
        for row in rows
        if (not service_type or row.get("s") == service_type)
        and (not host or _host_matches(row, host))
    ]


def _host_matches(row: Mapping[str, str], host: str) -> bool:
    wanted = host.casefold()
    fqdn = row.get("m", "").casefold()
    candidates = {fqdn, fqdn.split(".", 1)[0], row.get("node_id", "").casefold(), row.get("i", "")}
    return wanted in candidates


def search_json(rows: Iterable[Mapping[str, str]]) -> str:
    """``avahi-ps search``'s line: ``[obj,obj,...]`` of jq -c objects, no trailing newline.

    avahi-ps emits rows in reverse order; ``search_json(reversed(rows))`` is byte-identical.
    Strict parsers (PHP's, in Cloudy's UI) reject a whole list for one invalid string, so
    undecodable bytes and lone surrogates from gossip become U+FFFD, as jq does.
    """
    objects = (
        json.dumps(
            {valid_text(k): valid_text(v) for k, v in r.items()},
            separators=(",", ":"),
            ensure_ascii=False,
        )
        for r in rows
    )
    # jq -c escapes DEL, Python's json does not; DEL only occurs inside strings.
    return ("[" + ",".join(objects) + "]").replace("\x7f", "\\u007f")


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
    for name, value in zip(_FIELD_NAMES, _values(cleaned), strict=True):
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


def _forbidden_reason(name: str, char: str) -> str:
    if char in "'\"\\":
        return "avahi-ps readers would corrupt the list"
    if char == "&" and name == "txt":
        return "avahi-ps turns it into a space, which corrupts the list"
    if char.isspace():
        return "whitespace corrupts avahi-ps lists"
    if unicodedata.category(char) in ("Cc", "Cs"):
        return "control character"
    if char in BIDI_CONTROLS:
        return "bidirectional control character: it reorders what the UI shows"
    if name == "type" and not _TYPE_RE.fullmatch(char):
        return "a type is letters, digits, '_', '.' and '-': avahi-ps greps for it"
    return ""


def _check_port(port: str) -> str:
    if _PORT_RE.fullmatch(port) and 1 <= int(port) <= 65535:
        return str(int(port))
    raise UsageError(f"port must be a number 1-65535, got {port!r}")


# --- read-modify-write planning ---------------------------------------------------------


def upsert(entries: Sequence[Entry], new_entry: Entry) -> list[Entry]:
    """``entries`` with ``new_entry`` in place of those with its (type, port).

    Unlike avahi-ps (which appends and reverses the rest), the replaced entry keeps its
    position and the others their order, so republishing an unchanged entry gives the same
    tag value (no write). A new key is appended; duplicates of the key are dropped.
    """
    result: list[Entry] = []
    placed = False
    for entry in entries:
        if entry.key != new_entry.key:
            result.append(entry)
        elif not placed:
            result.append(new_entry)
            placed = True
    if not placed:
        result.append(new_entry)
    return result


def remove(entries: Sequence[Entry], type: str, port: str | int) -> list[Entry]:
    """``entries`` without those keyed (type, port); the others unchanged, in order."""
    return [e for e in entries if e.key != (type, str(port))]


def plan_services_tag(
    current_tags: Mapping[str, str], entries: Sequence[Entry], *, limit: int = DEFAULT_TAG_LIMIT
) -> TagChange:
    """The ``tags`` request that makes this node's ``services`` list ``entries``.

    No-op when the encoded value equals the current one (a legacy value that decodes the
    same is still rewritten, normalised). An empty list deletes the tag, as avahi-ps
    unpublish does. ``BudgetError`` when the node's whole tag set would exceed ``limit``.
    """
    if not entries:
        if SERVICES_TAG in current_tags:
            return TagChange(delete=(SERVICES_TAG,))
        return TagChange()
    encoded = encode_services(entries)
    if current_tags.get(SERVICES_TAG) == encoded:
        return TagChange()
    set_tags = {SERVICES_TAG: encoded}
    size = encoded_tags_size(merged_tags(current_tags, set_tags=set_tags))
    if size > limit:
        raise BudgetError(
            f"services tag would make this node's tags {size} bytes; the limit is {limit}",
            size=size,
            limit=limit,
        )
    return TagChange(set_tags=set_tags)


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
