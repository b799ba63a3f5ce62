"""Shared pytest set-up: the fixtures live in one module per real component.

Which ``serfbridge`` the tests import. ``tests/`` is a package, so pytest puts the
checkout's root first on ``sys.path``, and the source ``serfbridge/`` would shadow the
installed one: ``make test`` would then test the checkout, not the wheel it installed. So
the root moves to the end of ``sys.path`` here, before anything imports ``serfbridge``
(``tests`` itself is already imported, so ``tests.*`` still resolves to the checkout).
With the editable dev install the installed package *is* the checkout, as it should be.
``SERFBRIDGE_TEST_INSTALLED=1`` (``make test``, ``make test-deb``) makes every test fail
when the imported ``serfbridge`` still comes from the checkout, and
``SERFBRIDGE_TEST_SYSTEM_LIBS=1`` (``make test-deb``) when it or one of its libraries is not
Debian's (``/usr/lib/python3/dist-packages``).
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DEBIAN_SITE = Path("/usr/lib/python3/dist-packages")
LIBRARIES = ("serfbridge", "click", "kubernetes", "msgpack", "prometheus_client", "sdnotify",
             "tenacity")  # fmt: skip


def _move_checkout_to_end_of_path() -> None:
    at_root = [entry for entry in sys.path if Path(entry or ".").resolve() == REPO]
    for entry in at_root:
        sys.path.remove(entry)
    sys.path.extend(at_root)


_move_checkout_to_end_of_path()

pytest_plugins = ["tests.fixtures_serf", "tests.fixtures_kube", "tests.fixtures_world"]


@pytest.fixture(scope="session", autouse=True)
def installed_serfbridge_under_test() -> str:
    """Where the ``serfbridge`` under test lives; in installed mode, never the checkout."""
    import serfbridge

    where = Path(serfbridge.__file__).resolve()
    if os.environ.get("SERFBRIDGE_TEST_INSTALLED") == "1" and where.is_relative_to(
        REPO / "serfbridge"
    ):
        pytest.fail(
            f"SERFBRIDGE_TEST_INSTALLED=1 but serfbridge was imported from the checkout "
            f"({where}), not from the installed package",
            pytrace=False,
        )
    if os.environ.get("SERFBRIDGE_TEST_SYSTEM_LIBS") == "1":
        foreign = {
            name: path
            for name in LIBRARIES
            if not (path := _origin(name)).is_relative_to(DEBIAN_SITE)
        }
        if foreign:
            pytest.fail(f"SERFBRIDGE_TEST_SYSTEM_LIBS=1 but not Debian's: {foreign}", pytrace=False)
    return str(where)


def _origin(module: str) -> Path:
    return Path(importlib.import_module(module).__file__ or "").resolve()
