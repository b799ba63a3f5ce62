"""Property tests for serfbridge.cloudy: round trips, garbage, and avahi-ps byte identity."""

from __future__ import annotations

import base64
import bz2
import json
import string

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from serfbridge.cloudy import (
    DecodeResult,
    Entry,
    decode_services,
    decode_services_report,
    encode_services,
    make_entry,
)
from serfbridge.errors import ServicesDecodeError, UsageError

# Anything but a lone surrogate (not UTF-8) and "'" (every reader turns it into '"').
wire_text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="'"), max_size=20)
entries = st.builds(
    Entry, wire_text, wire_text, wire_text, wire_text, wire_text, wire_text, wire_text
)
SLOW = settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])


def recipe_decode(value: str) -> object:
    """reference/cloudy-avahi-ps.md §1.9's decoding recipe, literally."""
    return json.loads(bz2.decompress(base64.b64decode(value)).decode().replace("'", '"'))


def pack(raw: bytes) -> str:
    return base64.b64encode(bz2.compress(raw, 9)).decode("ascii")


def decodes_or_refuses(value: str) -> None:
    try:
        result = decode_services_report(value)
    except ServicesDecodeError:
        event("refused")
        return
    event("decoded" if result.entries else "decoded, no entries")
    assert isinstance(result, DecodeResult)
    assert all(isinstance(v, str) for e in result.entries for v in e.to_wire().values())


@SLOW
@given(st.lists(entries, max_size=8))
def test_valid_entries_survive_encode_decode(listed):
    assert decode_services_report(encode_services(listed)) == DecodeResult(tuple(listed), ())


@settings(deadline=None, max_examples=300)
@given(st.text(max_size=600))
def test_arbitrary_text_only_raises_decode_error(value):
    decodes_or_refuses(value)


@settings(deadline=None, max_examples=200)
@given(st.binary(max_size=600))
def test_arbitrary_base64_payload_only_raises_decode_error(payload):
    decodes_or_refuses(base64.b64encode(payload).decode())


@SLOW
@given(st.binary(max_size=400))
def test_arbitrary_bzip2_payload_only_raises_decode_error(raw):
    decodes_or_refuses(pack(raw))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=2), inner),
    max_leaves=12,
)
keyed_objects = st.lists(
    st.dictionaries(st.sampled_from("sdmipetx"), json_values, max_size=8), max_size=4
)


@SLOW
@given(json_values | keyed_objects)
def test_arbitrary_json_only_raises_decode_error(data):
    decodes_or_refuses(pack(json.dumps(data).encode()))


# Mostly plausible publish arguments; half the time one of them is replaced by anything.
visible = st.characters(categories=("L", "N", "P", "S"), exclude_characters="'\"\\")
plain = st.text(visible.filter(lambda c: c != "&"), max_size=15)


@st.composite
def publish_args(draw):
    args = {
        "description": draw(st.text(visible | st.sampled_from(" \t\n\xa0"), min_size=1)),
        "type": draw(st.text(string.ascii_letters + string.digits + "_.-", min_size=1)),
        "port": draw(st.integers(1, 65535) | st.integers(0, 99999).map(str)),
        "txt": draw(plain),
        "host": draw(plain),
        "ip": draw(plain),
        "microcloud": draw(plain),
    }
    if draw(st.booleans()):
        args[draw(st.sampled_from(sorted(args)))] = draw(st.text(max_size=10))
    return args


@SLOW
@given(publish_args())
def test_anything_make_entry_accepts_is_read_back_by_the_reference_recipe(args):
    try:
        entry = make_entry(**args)
    except UsageError:
        event("refused")
        return
    event("accepted")
    value = encode_services([entry])
    assert recipe_decode(value) == [entry.to_wire()]
    # Byte identity with avahi-ps's string concatenation: no JSON escaping was needed.
    fields = zip("sdmipet", entry.to_wire().values(), strict=True)
    concatenated = "[{" + ",".join(f'"{k}":"{v}"' for k, v in fields) + "}]\n"
    assert bz2.decompress(base64.b64decode(value)) == concatenated.encode()
    assert decode_services(value) == [entry]


GOOD_TAG = encode_services(
    [
        Entry("serf", "SERF_instance_running", "n1.guifi.local", "10.0.0.1", "5000", "lab", ""),
        Entry("kubernetes", "apps_web", "n1.guifi.local", "10.0.0.1", "30080", "lab", "x=1"),
    ]
)


@settings(deadline=None, max_examples=200)
@given(
    st.integers(0, len(GOOD_TAG) - 1),
    st.sampled_from(string.ascii_letters + string.digits + "+/="),
    st.integers(0, len(GOOD_TAG)),
)
def test_mutated_or_truncated_good_tag_only_raises_decode_error(position, char, cut):
    decodes_or_refuses(GOOD_TAG[:position] + char + GOOD_TAG[position + 1 :])
    decodes_or_refuses(GOOD_TAG[:cut])
