"""Bounded building blocks for decoding hostile data: a JSON list read item by item, and
a cache bounded by weight.

Callers: ``cloudy.py`` (a peer's ``services`` tag). Generic on purpose: nothing here
knows avahi-ps. Pure apart from the cache's lock: no I/O, no clock, no logging.
Errors: ``ValueError`` (bad JSON), with ``errors.NotAList`` and ``errors.TooManyItems``
under it.
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

from serfbridge.errors import NotAList, TooManyItems

T = TypeVar("T")

_DECODER = json.JSONDecoder()
_BLANK = re.compile(r"[ \t\n\r]*")


def json_kind(value: object) -> str:
    kinds = {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}
    return kinds.get(type(value), "number")


def split_json_list(text: str, *, max_items: int) -> list[tuple[object, str]]:
    """The items of the JSON list ``text``, each with its exact text, at most ``max_items``.

    Parsed one value at a time with the standard decoder, so an oversized list is refused
    after ``max_items`` items instead of being built whole; each item's text is the slice
    of ``text`` it was parsed from (what "kept byte for byte" keeps). Deep nesting is the
    decoder's ``RecursionError``, reported as ``ValueError``.
    """
    pos = _skip_blank(text, 0)
    if not text.startswith("[", pos):
        raise NotAList(json_kind(_load(text)))
    pos = _skip_blank(text, pos + 1)
    items: list[tuple[object, str]] = []
    closed = text.startswith("]", pos)
    while not closed:
        if len(items) == max_items:
            raise TooManyItems(f"more than {max_items} items")
        try:
            item, end = _DECODER.raw_decode(text, pos)
        except RecursionError as exc:
            raise ValueError(f"nested too deeply at {pos}") from exc
        items.append((item, text[pos:end]))
        pos = _skip_blank(text, end)
        closed = text.startswith("]", pos)
        if not closed:
            if not text.startswith(",", pos):
                raise ValueError(f"expected ',' or ']' at {pos}")
            pos = _skip_blank(text, pos + 1)
    if _skip_blank(text, pos + 1) != len(text):
        raise ValueError(f"extra data after {pos + 1}")
    return items


def _load(text: str) -> object:
    try:
        return json.loads(text)
    except RecursionError as exc:
        raise ValueError("nested too deeply") from exc


def _skip_blank(text: str, pos: int) -> int:
    match = _BLANK.match(text, pos)
    return match.end() if match else pos


class WeightedCache(Generic[T]):
    """Values by string key, least recently used first out, bounded by total weight.

    Weighed by what each value holds, not counted: a few big values cannot hold more
    memory than many small ones. Shared by the daemon's threads, hence the lock.
    """

    def __init__(self, max_weight: int, weigh: Callable[[str, T], int]) -> None:
        self._max = max_weight
        self._weigh = weigh
        self._weight = 0
        self._items: OrderedDict[str, tuple[T, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> T | None:
        with self._lock:
            found = self._items.get(key)
            if found is None:
                return None
            self._items.move_to_end(key)
            return found[0]

    def put(self, key: str, value: T) -> None:
        weight = self._weigh(key, value)
        with self._lock:
            if key in self._items or weight > self._max:
                return
            self._items[key] = (value, weight)
            self._weight += weight
            while self._weight > self._max:
                _, (_, dropped) = self._items.popitem(last=False)
                self._weight -= dropped

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._weight = 0
