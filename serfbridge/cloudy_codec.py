"""Cloudy's avahi-ps ``services`` tag, as bytes: encode our entries, decode a peer's.

The one place that knows the byte format avahi-ps's serf plug writes into the Serf tag
``services`` (``reference/cloudy-avahi-ps.md`` §1.2): ``base64(bzip2 -9("[" + objects
+ "]\\n"))``, each object compact JSON with the keys ``s,d,m,i,p,e,t`` in that order and
every value a string. Encoding our entries gives exactly the bytes avahi-ps would write;
decoding is tolerant of what Cloudy nodes really gossip (legacy single quotes, missing
keys, non-string values) and reports per-entry problems instead of hiding the list.

Peers' values are hostile data. A decode is bounded in input size, decompressed bytes,
items and problem lines, so a bzip2 bomb costs one error, not the bridge's CPU or memory;
results are cached by value (the raw tag string), so a value seen on every pass is
decoded once. Each decoded entry keeps its JSON text (``Entry.raw``): entries we do not own
are re-encoded byte for byte from it, never re-validated as ours.

Callers: through ``cloudy`` (its facade). Pure apart from the memo's lock: no I/O, no
logging, no clock. Errors: ``ServicesDecodeError`` (a peer's tag cannot be read) and
``UsageError`` (an entry of ours that would corrupt the list).
"""

from __future__ import annotations

import base64
import binascii
import bz2
import functools
import json
from collections.abc import Iterable
from dataclasses import dataclass

from serfbridge import bounded
from serfbridge.cloudy_entry import FIELD_NAMES, WIRE_KEYS, Entry, field_values
from serfbridge.errors import NotAList, ServicesDecodeError, TooManyItems, UsageError

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


@dataclass(frozen=True)
class DecodeResult:
    """A decoded list: the usable entries and one message per entry problem."""

    entries: tuple[Entry, ...]
    problems: tuple[str, ...] = ()


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
    for name, value in zip(FIELD_NAMES, field_values(entry), strict=True):
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
        entry = _decode_item(item, f"entry {index}", problems=problems)
        if entry is not None:
            entries.append(entry.with_raw(raw))
    if len(problems) > MAX_PROBLEMS:
        problems[MAX_PROBLEMS:] = [f"and {len(problems) - MAX_PROBLEMS} more problems"]
    return DecodeResult(tuple(entries), tuple(problems))


def _split_list(text: str) -> list[tuple[object, str]]:
    try:
        return bounded.split_json_list(text, max_items=MAX_ITEMS)
    except NotAList as exc:
        raise ServicesDecodeError(f"services tag is not a JSON list (got {exc.kind})") from exc
    except TooManyItems as exc:
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


def _decode_item(item: object, where: str, *, problems: list[str]) -> Entry | None:
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
