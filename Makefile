# serfbridge developer commands. `make install` once, then `make test` / `make demo`.
VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(VENV)/bin/pip
CACHE   ?= /var/cache/serfbridge
DEBS    := serf etcd-server etcd-client golang-go rsync dpkg-dev systemd curl openssl jq

.PHONY: install deps kube-apiserver lint fmt test test-unit test-docker bench demo docs clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q -U pip
	$(PIP) install -q -e '.[test,bench]'
	touch $@

# Debian packages the tests run for real. Idempotent: installs only what is missing.
deps:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "deps: installing$$missing"; apt-get update -qq && apt-get install -y -qq $$missing; \
	else echo "deps: all present"; fi
	@command -v kubectl >/dev/null || { echo "deps: installing kubernetes-client (kubectl)"; apt-get install -y -qq kubernetes-client; }

kube-apiserver:
	SERFBRIDGE_CACHE=$(CACHE) bash .ci/build-kube-apiserver

fmt: install
	$(VENV)/bin/ruff format serfbridge tests bench
	$(VENV)/bin/ruff check --fix serfbridge tests bench

lint: install
	$(VENV)/bin/ruff check serfbridge tests bench
	$(VENV)/bin/mypy

test: install
	$(VENV)/bin/pytest -q

test-unit: install
	$(VENV)/bin/pytest -q -m "not integration"

bench: install deps kube-apiserver
	$(PY) -m bench

docs: install
	$(PY) -m serfbridge.cli.reference > docs/configuration.md

demo: install deps kube-apiserver
	$(PY) -m tests.lab.demo

# The integration suite against Serf agents in Docker, for real (.ci/test-docker): a
# private dockerd (docker.io, installed if missing; stopped by PID at the end), a local
# base image (debootstrap, cached in $(CACHE)), our image, docker-compose.yml with
# compose v1, and these tests with the lab's agents in containers. Run by .ci/run.
DOCKER_TESTS ?= tests/test_lab_serf.py tests/test_to_k8s.py \
	tests/test_to_serf.py::test_two_port_nodeport_on_two_of_three_nodes_change_and_delete \
	tests/test_to_serf.py::test_hand_published_entry_survives_every_write \
	tests/test_to_serf.py::test_crash_consistency_100_changes_20_kill_9 \
	tests/test_to_serf.py::test_agent_restart_tags_back_within_one_second \
	tests/test_docker_image.py
test-docker: install deps kube-apiserver
	SERFBRIDGE_CACHE=$(CACHE) VENV=$(VENV) DOCKER_TESTS="$(DOCKER_TESTS)" bash .ci/test-docker

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .hypothesis
