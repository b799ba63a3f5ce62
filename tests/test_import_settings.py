"""The imports settings: flag, environment and file layers give the same typed values."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from click.testing import CliRunner

from serfbridge import config, daemon, logs
from serfbridge.cli import cli
from serfbridge.config import Settings


class Recorder:
    seen: ClassVar[list[Settings]] = []

    def __init__(self, settings: Settings, **_: Any) -> None:
        Recorder.seen.append(settings)

    def run(self) -> int:
        return 0


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    for name in [*config.ENV_NAMES.values(), "SERFBRIDGE_CONFIG", "CREDENTIALS_DIRECTORY"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(logs, "configure", lambda *a, **k: None)
    monkeypatch.setattr(daemon, "Daemon", Recorder)
    Recorder.seen = []
    yield CliRunner()


WANT = {
    "import_services": True,
    "import_type": "sync.*",
    "import_cidr": ("10.0.0.0/8", "2001:db8::/32"),
    "import_namespace": "community",
}


@pytest.mark.parametrize(
    ("args", "env", "file"),
    [
        pytest.param(
            [
                "--import",
                "--import-type",
                "sync.*",
                "--import-cidr",
                "10.0.0.0/8,2001:db8::/32",
                "--import-namespace",
                "community",
            ],
            {},
            "",
            id="flags",
        ),
        pytest.param(
            [],
            {
                "SERFBRIDGE_IMPORT": "1",
                "SERFBRIDGE_IMPORT_TYPE": "sync.*",
                "SERFBRIDGE_IMPORT_CIDR": "10.0.0.0/8, 2001:db8::/32",
                "SERFBRIDGE_IMPORT_NAMESPACE": "community",
            },
            "",
            id="environment",
        ),
        pytest.param(
            [],
            {},
            "import=yes\nimport-type=sync.*\nimport-cidr=10.0.0.0/8,2001:db8::/32\n"
            "SERFBRIDGE_IMPORT_NAMESPACE=community\n",
            id="file",
        ),
    ],
)
def test_every_layer_gives_the_same_settings(
    runner: CliRunner, tmp_path: Path, args: list[str], env: dict[str, str], file: str
) -> None:
    path = tmp_path / "config"
    path.write_text(file)
    result = runner.invoke(cli, ["--config", str(path), "run", *args], env=env)
    assert result.exit_code == 0, result.output
    got = Recorder.seen[0]
    assert {k: getattr(got, k) for k in WANT} == WANT
    plan = got.plan_settings(None)
    assert (plan.import_type, plan.import_cidr, plan.import_namespace) == (
        "sync.*",
        WANT["import_cidr"],
        "community",
    )


def test_imports_are_off_by_default(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "config"
    path.write_text("")
    assert runner.invoke(cli, ["--config", str(path), "run"], env={}).exit_code == 0
    got = Recorder.seen[0]
    assert (got.import_services, got.import_type, got.import_cidr, got.import_namespace) == (
        False,
        ".*",
        (),
        "cloudy",
    )
