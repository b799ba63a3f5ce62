"""Fuzzing the config-file parser: any bytes give settings or our ConfigError, in one line,
without a value in it, in bounded time and memory (issue 13, defects 9 and 10).

The file is real (written to a temp dir and read through ``read_config_file``), and the
layers are merged as every command merges them (``config.merge``, then the rules).
"""

from __future__ import annotations

import string
import time
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serfbridge import config
from serfbridge.config import Settings
from serfbridge.errors import ConfigError

_ODD_KEYS = ["cluster-name", "export SERF_RPC_AUTH", "SERF_RPC_AUT", "serfbridge_cluster"]
_KEYS = sorted(
    [*config.ENV_NAMES.values(), *(n.replace("_", "-") for n in config.ENV_NAMES), *_ODD_KEYS]
)
_SEPARATORS = ["=", " = ", " ", "\t", ":", "==", "= '", '="', "=\\", "=$", "=#"]
_SECRETS = st.text(string.ascii_letters + string.digits, min_size=10, max_size=16)
_NOISE = st.text(st.characters(codec="utf-8"), max_size=12)


@pytest.fixture(scope="module")
def path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("config-fuzz") / "config"


def parse(path: Path, data: bytes) -> Settings | ConfigError:
    """What every command does with the file: read it, merge it, check it."""
    path.write_bytes(data)
    try:
        return config.merge({"node_name": "n1"}, config.read_config_file(str(path)))
    except ConfigError as exc:
        return exc


def assert_one_line(outcome: Settings | ConfigError) -> None:
    if isinstance(outcome, ConfigError):
        text = str(outcome)
        assert text and "\n" not in text and "\r" not in text, text
        assert outcome.bad_input


@settings(max_examples=400, deadline=2000)
@given(data=st.binary(max_size=4096))
def test_any_bytes_give_settings_or_one_line_config_error(path: Path, data: bytes) -> None:
    assert_one_line(parse(path, data))


@st.composite
def config_lines(draw: st.DrawFn) -> tuple[bytes, list[str]]:
    """Lines that look like settings, each with a secret somewhere after its key."""
    lines, secrets = [], []
    for _ in range(draw(st.integers(1, 6))):
        secret = draw(_SECRETS)
        secrets.append(secret)
        key, sep = draw(st.sampled_from(_KEYS)), draw(st.sampled_from(_SEPARATORS))
        before, after = draw(_NOISE), draw(_NOISE)
        lines.append(f"{key}{sep}{before}{secret}{after}")
    raw = "\n".join(lines).encode("utf-8", "surrogatepass")
    if draw(st.booleans()):
        raw += draw(st.binary(max_size=64))
    return raw, secrets


@settings(max_examples=400, deadline=2000)
@given(case=config_lines())
def test_no_error_echoes_a_value(path: Path, case: tuple[bytes, list[str]]) -> None:
    data, secrets = case
    outcome = parse(path, data)
    assert_one_line(outcome)
    if isinstance(outcome, ConfigError):
        for secret in secrets:
            assert secret not in str(outcome), (data, str(outcome))
    else:
        assert outcome.rpc_auth is None or outcome.rpc_auth == outcome.rpc_auth.strip()


@settings(max_examples=20, deadline=None)
@given(
    unit=st.binary(min_size=1, max_size=64),
    size=st.integers(config.MAX_CONFIG_BYTES - 64, config.MAX_CONFIG_BYTES + 4096),
)
def test_big_inputs_cost_bounded_time_and_memory(path: Path, unit: bytes, size: int) -> None:
    data = (unit * (size // len(unit) + 1))[:size]
    tracemalloc.start()
    started = time.monotonic()
    try:
        outcome = parse(path, data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert_one_line(outcome)
    assert time.monotonic() - started < 2.0
    assert peak < 16 * 1024 * 1024, peak
    if size > config.MAX_CONFIG_BYTES:
        assert isinstance(outcome, ConfigError) and "larger than" in str(outcome)
