"""The pure modules read no environment: what the import contracts cannot say.

``setup.cfg``'s ``pure-core`` contract forbids ``os`` (and ``socket``, ``time``,
``threading``) in the protocol core, the planners and Cloudy's codec; ``os.environ`` could
still arrive through a name imported from elsewhere, so their source is read here. The
module list is the contract's own, so the two never drift apart.
"""

from __future__ import annotations

import configparser
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENVIRONMENT = re.compile(r"\benviron\b|\bgetenv\b|\bputenv\b")


def pure_modules() -> list[str]:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    listed = config["importlinter:contract:pure-core"]["source_modules"]
    return [name for name in listed.split() if name]


def source_of(module: str) -> Path:
    return ROOT.joinpath(*module.split(".")).with_suffix(".py")


def test_the_contract_lists_every_planner_and_codec_module() -> None:
    modules = set(pure_modules())
    on_disk = {
        f"serfbridge.{path.stem}"
        for pattern in ("plan_*.py", "cloudy*.py")
        for path in (ROOT / "serfbridge").glob(pattern)
    }
    assert on_disk, "no planner modules found: the glob is wrong"
    assert on_disk <= modules, f"not under the pure-core contract: {sorted(on_disk - modules)}"


@pytest.mark.parametrize("module", pure_modules())
def test_a_pure_module_reads_no_environment(module: str) -> None:
    text = source_of(module).read_text(encoding="utf-8")
    found = [n for n, line in enumerate(text.splitlines(), 1) if ENVIRONMENT.search(line)]
    assert found == [], f"{module} mentions the environment on lines {found}"


def test_the_check_sees_an_environment_read() -> None:
    assert ENVIRONMENT.search("value = os.environ.get('X')")
    assert ENVIRONMENT.search("from os import getenv")
    assert not ENVIRONMENT.search("environment_name = 'x'")
