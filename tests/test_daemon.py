"""The daemon's wiring (``daemon``): readiness and ``/status`` from the pass runners'
state, and SIGHUP's reload, with no process, agent or apiserver (nothing is dialled:
the Serf client connects on first use, and no pass runs here)."""

from __future__ import annotations

import dataclasses

import pytest

from serfbridge.config import Settings
from serfbridge.daemon import Daemon
from serfbridge.errors import ConfigError

FORBIDDEN = "KubeForbidden: forbidden: patch nodes"


def daemon_with(states: dict[str, tuple[float | None, str | None, bool]], **settings) -> Daemon:
    d = Daemon(Settings(node_name="n1", **settings))
    for runner in d.runners:
        runner.last_ok, runner.last_error, runner.stopped = states.get(
            runner.direction, (None, None, False)
        )
    return d


@pytest.mark.parametrize(
    ("states", "settings", "ready"),
    [
        pytest.param(
            {}, {}, (False, "not synced: to-k8s, to-serf (no pass yet; no pass yet)"), id="new"
        ),
        pytest.param(
            {"to-k8s": (1.0, None, False), "to-serf": (1.0, None, False)},
            {},
            (True, "ready"),
            id="both-synced",
        ),
        pytest.param(
            {"to-k8s": (1.0, None, False)}, {"to_serf": False}, (True, "ready"), id="one-enabled"
        ),
        pytest.param(
            {"to-k8s": (1.0, "TransportError: refused", False), "to-serf": (1.0, None, False)},
            {},
            (False, "not synced: to-k8s (TransportError: refused)"),
            id="failing-since",
        ),
        pytest.param(
            {"to-k8s": (None, FORBIDDEN, True), "to-serf": (1.0, None, False)},
            {},
            (
                False,
                f"not synced: to-k8s ({FORBIDDEN} (permanent: not retried before the next resync))",
            ),
            id="stopped-by-a-permanent-error",
        ),
    ],
)
def test_readiness_says_which_direction_and_why(states, settings, ready) -> None:
    assert daemon_with(states, **settings).ready() == ready


def test_status_reports_errors_and_stopped_directions() -> None:
    d = daemon_with({"to-k8s": (None, FORBIDDEN, True), "to-serf": (5.0, None, False)})
    d.publish.self_member = "n1-member"
    status = d.status()
    assert status["errors"] == {"to-k8s": FORBIDDEN}
    assert status["stopped"] == ["to-k8s"]
    assert status["last_sync"] == {"to-serf": 5.0}
    assert status["self_member"] == "n1-member"
    assert status["ready"] is False


def test_reload_keeps_fixed_settings_retunes_and_resumes() -> None:
    old = Settings(node_name="n1")
    new = dataclasses.replace(old, resync=5.0, debounce=0.5, http_addr="127.0.0.1:1")
    d = Daemon(old, reload=lambda: new)
    d.labels.stopped = True
    d._reload_requested = True
    d._apply_reload()
    assert d.settings.resync == 5.0 and d.settings.http_addr == old.http_addr
    assert d.scheduler.triggers["to-k8s"].quiet == 0.5 and d.scheduler.resync == 5.0
    assert not d.labels.stopped
    assert d.scheduler.take_due().directions == ("to-k8s", "to-serf")  # urgent pokes


def test_a_reload_that_fails_keeps_the_old_settings() -> None:
    old = Settings(node_name="n1")

    def broken() -> Settings:
        raise ConfigError("config file x:1: unknown key")

    d = Daemon(old, reload=broken)
    d._reload_requested = True
    d._apply_reload()
    assert d.settings is old
