"""The docs that must match the code: the configuration reference and the README."""

from __future__ import annotations

from pathlib import Path

from serfbridge.cli.reference import render
from serfbridge.config import ENV_NAMES

ROOT = Path(__file__).resolve().parent.parent


def test_configuration_reference_matches_the_cli() -> None:
    committed = (ROOT / "docs" / "configuration.md").read_text()
    assert committed == render(), "docs/configuration.md is stale: run `make docs`"


def test_every_setting_is_in_the_reference() -> None:
    text = render()
    missing = [env for env in ENV_NAMES.values() if env not in text]
    assert missing == []


def test_readme_names_the_two_setup_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
