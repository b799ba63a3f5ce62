"""Shared pytest set-up: the fixtures live in one module per real component."""

pytest_plugins = ["tests.fixtures_serf", "tests.fixtures_kube", "tests.fixtures_world"]
