"""Hypothesis: a peer's ``services`` value, however hostile, gives only our results or our
error, within bounded time and memory (issue 13: bzip2 bombs, deep and huge JSON)."""

from __future__ import annotations

import base64
import bz2
import json
import time
import tracemalloc

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from serfbridge import cloudy, cloudy_codec
from serfbridge.cloudy import (
    MAX_DECODED_BYTES,
    MAX_ITEMS,
    MAX_PROBLEMS,
    SERVICES_TAG,
    DecodeResult,
    decode_members,
    decode_services_report,
    encode_services,
)
from serfbridge.errors import ServicesDecodeError

#: Per decode, on a loaded 2-core machine; an unbounded bomb took 14.8 s.
TIME_BOUND_S = 1.0
#: Python-level peak per decode; an unbounded bomb took 357 MiB.
MEMORY_BOUND = 8 << 20

FAST = settings(deadline=None, max_examples=60, suppress_health_check=list(HealthCheck))


def pack(raw: bytes) -> str:
    return base64.b64encode(bz2.compress(raw, 9)).decode("ascii")


def bounded_decode(value: str) -> DecodeResult | None:
    """Decode uncached; assert the bounds; None when refused with our error."""
    cloudy_codec._CACHE.clear()
    tracemalloc.start()
    start = time.perf_counter()
    try:
        result: DecodeResult | None = decode_services_report(value)
    except ServicesDecodeError:
        result = None
    except Exception as exc:  # anything else is a bug: only our error may come out
        raise AssertionError(f"{type(exc).__name__} escaped the decoder: {exc}") from exc
    finally:
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert elapsed < TIME_BOUND_S, f"decode took {elapsed:.2f} s"
    assert peak < MEMORY_BOUND, f"decode peaked at {peak / 2**20:.1f} MiB"
    event("refused" if result is None else "decoded")
    if result is not None:
        assert len(result.entries) <= MAX_ITEMS
        assert len(result.problems) <= MAX_PROBLEMS + 1
        assert all(isinstance(v, str) for e in result.entries for v in e.to_wire().values())
    return result


# Bombs: a short pattern repeated up to far past every bound, inside a list or not.
patterns = st.sampled_from(
    [b"{},", b"[", b"{", b'"', b" ", b"1,", b'{"s":"x"},', b"\\u0000", b"[{}]"]
)


@FAST
@given(patterns, st.integers(1, 400_000), st.booleans())
def test_repetition_bombs(pattern: bytes, count: int, listed: bool) -> None:
    body = pattern * count
    value = pack(b"[" + body + b"{}]\n" if listed else body)
    assert len(value) < cloudy.MAX_ENCODED_CHARS  # bzip2 makes them small: that is the point
    bounded_decode(value)


@FAST
@given(st.integers(1, 5 * MAX_DECODED_BYTES))
def test_huge_string_and_deep_nesting(size: int) -> None:
    bounded_decode(pack(b'[{"s":"' + b"x" * size + b'"}]\n'))
    bounded_decode(pack(b"[" * size + b"]" * size))
    bounded_decode(pack(b'[{"s":' * size))


@FAST
@given(st.binary(max_size=4000))
def test_arbitrary_bytes_inside_bzip2(raw: bytes) -> None:
    bounded_decode(pack(raw))


@FAST
@given(st.text(max_size=cloudy.MAX_ENCODED_CHARS + 100))
def test_arbitrary_text_as_the_tag(value: str) -> None:
    bounded_decode(value)


@FAST
@given(st.binary(min_size=1, max_size=3000))
def test_concatenated_streams_and_trailing_bytes(raw: bytes) -> None:
    one = bz2.compress(b"[" + b"{}," * 1000, 9)
    bounded_decode(base64.b64encode(one * 5 + raw).decode())


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=30,
)
objects = st.dictionaries(st.sampled_from("sdmipetxy"), json_values, max_size=9)


@FAST
@given(st.lists(objects, max_size=20), st.sampled_from(["", " ", "\n", "\t "]))
def test_entries_we_do_not_own_encode_back_byte_for_byte(listed, blank) -> None:
    """Decoded entries re-encode as exactly the JSON text they were read from."""
    texts = [json.dumps(o, ensure_ascii=bool(len(o) % 2)).replace("'", "\\u0027") for o in listed]
    value = pack(("[" + blank + ("," + blank).join(texts) + blank + "]\n").encode())
    result = bounded_decode(value)
    assert result is not None
    kept = [e.raw for e in result.entries]
    assert set(kept) <= set(texts)
    again = bz2.decompress(base64.b64decode(encode_services(result.entries))).decode()
    assert again == "[" + ",".join(kept) + "]\n"


def test_two_bomb_members_give_one_warning_line_each() -> None:
    bomb = pack(b"[" + b"{}," * 349_525 + b"{}]")
    members = [(f"bomb{i}", "alive", {SERVICES_TAG: bomb}) for i in range(2)]
    for _ in range(3):  # steady gossip: the same value every pass
        rows, warnings = decode_members(members)
        assert rows == [] and len(warnings) == 2
