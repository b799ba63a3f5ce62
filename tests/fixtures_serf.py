"""pytest fixtures for real Serf agents; the harness itself is ``tests.lab.serfagents``.

Loaded through ``pytest_plugins`` in ``tests/conftest.py``. A missing ``serf`` binary fails
the test (never skips); under ``make test-docker`` (``SERFBRIDGE_LAB_SERF_IMAGE`` set) the
agents are containers (``tests.lab.serfdocker``) and a missing engine or image fails it.
When a test fails, every agent's log tail is added to its report.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from tests.lab import serfdocker
from tests.lab.errors import LabError
from tests.lab.serfagents import IMAGE_ENV, SERF_BIN, AgentSpec, SerfCluster

_CLUSTERS = pytest.StashKey[list[SerfCluster]]()

SerfClusterFactory = Callable[..., SerfCluster]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    clusters = item.stash.get(_CLUSTERS, [])
    if report.failed and clusters:
        text = "\n".join(cluster.logs() for cluster in clusters)
        report.sections.append((f"serf agent logs ({report.when})", text))
    return report


@pytest.fixture
def serf_cluster(request: pytest.FixtureRequest) -> Iterator[SerfClusterFactory]:
    """Factory: ``serf_cluster(3)`` or ``serf_cluster(specs=[AgentSpec(...)])``, started
    and joined. Every cluster is closed (all PIDs stopped) at teardown, even on failure."""
    if serfdocker.enabled():
        try:
            serfdocker.check_image(os.environ[IMAGE_ENV])
        except LabError as exc:
            pytest.fail(str(exc), pytrace=False)
    elif shutil.which(SERF_BIN) is None:
        pytest.fail(
            f"`{SERF_BIN}` is not on PATH: run `apt-get install serf` (or `make deps`)",
            pytrace=False,
        )
    clusters: list[SerfCluster] = []
    request.node.stash[_CLUSTERS] = clusters
    with contextlib.ExitStack() as closers:  # closes every cluster even if one close fails

        def start(
            n: int = 3, *, specs: Sequence[AgentSpec] | None = None, **kw: Any
        ) -> SerfCluster:
            cluster = SerfCluster(n, specs=specs, **kw)
            clusters.append(cluster)  # registered first, so a failed start still shows logs
            closers.callback(cluster.close)
            cluster.start()
            return cluster

        yield start


@pytest.fixture
def serf3(serf_cluster: SerfClusterFactory) -> SerfCluster:
    """Three joined agents n1, n2, n3 with default options."""
    return serf_cluster(3)
