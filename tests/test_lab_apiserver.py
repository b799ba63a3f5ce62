"""The lab harness itself: starts, restarts the apiserver on the same port with etcd's data,
compacts etcd, stops both by PID, and fails (never skips) when a component is missing."""

from __future__ import annotations

import os

import pytest

from tests.lab.apiserver import LabApiServer, free_port
from tests.lab.errors import MissingComponent

pytestmark = pytest.mark.integration


def test_missing_binary_fails_with_the_install_command(tmp_path):
    lab = LabApiServer(binary=str(tmp_path / "kube-apiserver"), workdir=tmp_path)
    with pytest.raises(MissingComponent, match="make kube-apiserver"):
        lab.start()


def test_free_port_is_bindable():
    assert 0 < free_port() < 65536


def test_restart_keeps_data_and_port_and_stop_reaps_both(private_apiserver):
    lab = private_apiserver
    assert lab.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"
    assert lab.kubectl("create", "configmap", "kept", "--from-literal=a=b").returncode == 0
    port, old_pid = lab.port, lab.apiserver_pid
    lab.stop_apiserver()
    assert lab.apiserver_pid is None and lab.etcd_pid is not None
    assert lab.kubectl("get", "configmap", "kept", "--request-timeout=2s").returncode != 0
    lab.start_apiserver()
    assert (lab.port, lab.apiserver_pid != old_pid) == (port, True)
    assert lab.kubectl("get", "configmap", "kept").returncode == 0
    pids = (lab.apiserver_pid, lab.etcd_pid)
    lab.stop()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    lab.start()  # the fixture stops it again


def test_compaction_helper(nowatch_apiserver):
    before = nowatch_apiserver.etcd_revision()
    assert nowatch_apiserver.kubectl("create", "namespace", "compact-me").returncode == 0
    rev = nowatch_apiserver.compact_etcd()
    assert rev > before
    assert "kube-apiserver" in nowatch_apiserver.logs(5)
