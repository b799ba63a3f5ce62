"""Configuration loading: explicit path, KUBECONFIG, in-cluster; failures are ConfigError."""

from __future__ import annotations

import pytest

from serfbridge import kube
from serfbridge.errors import ConfigError


def test_missing_kubeconfig_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="nope"):
        kube.load_client(str(tmp_path / "nope"), env={})


def test_kubeconfig_from_env(tmp_path):
    with pytest.raises(ConfigError, match="from-env"):
        kube.load_client(env={"KUBECONFIG": str(tmp_path / "from-env")})


def test_in_cluster_without_service_account_files_is_a_config_error():
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    with pytest.raises(ConfigError, match="in-cluster"):
        kube.load_client(env=env)


@pytest.mark.integration
def test_explicit_path_wins_over_env(kube_apiserver):
    env = {"KUBECONFIG": "/nonexistent", "KUBERNETES_SERVICE_HOST": "10.96.0.1"}
    client = kube.load_client(str(kube_apiserver.kubeconfig), env=env)
    assert client.get_node  # loads; a request works
    client.request("GET", "/api/v1/namespaces/default", verb="get", resource="namespaces")
    client.close()
