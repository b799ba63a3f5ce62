"""Shared pytest set-up: the fixtures live in one module per real component."""

import os

pytest_plugins = ["tests.fixtures_serf", "tests.fixtures_kube", "tests.fixtures_world"]

# Our image and the container backend need the engine `make test-docker` starts: that
# target runs this file (with SERFBRIDGE_LAB_SERF_IMAGE set); plain `make test` does not.
collect_ignore = [] if os.environ.get("SERFBRIDGE_LAB_SERF_IMAGE") else ["test_docker_image.py"]
