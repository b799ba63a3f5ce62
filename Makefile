# serfbridge developer commands. `make install` once, then `make test` / `make demo`.
# .venv is the editable dev install (`make install` = `make dev`: lint, demo, bench, docs);
# `make test` and `make test-deb` test what users install, never the checkout.
VENV    ?= .venv
# `make test`: the built wheel, installed (not -e) with its test extras in a fresh venv.
TEST_VENV ?= dist/test-venv
# `make test-deb`: Debian's /usr/bin/python3 with Debian's libraries (system site-packages)
# and the installed .deb; pip adds only pytest, which the package does not use.
DEB_TEST_VENV ?= dist/deb-test-venv
DEB_TESTS ?= tests/test_to_k8s.py tests/test_to_serf.py
PY      := $(VENV)/bin/python
PIP     := $(VENV)/bin/pip
CACHE   ?= /var/cache/serfbridge
DEBS    := serf etcd-server etcd-client golang-go rsync dpkg-dev systemd curl openssl jq
# `make deb` (debhelper, pybuild) and its lintian check; python3-venv for the test venvs.
DEBS    += debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools \
           python3-wheel python3-venv lintian git
# `make test-boot`: the .deb in a debootstrapped Debian 12 booted by systemd-nspawn.
DEBS    += debootstrap systemd-container
# tests/test_lab_network.py: hosts in network namespaces, link faults with iptables.
DEBS    += iproute2 iptables
BOOT_TESTS ?= tests/test_systemd_boot.py

.PHONY: install dev deps kube-apiserver lint import-graph fmt test test-wheel test-unit test-docker bench bench-imports demo docs clean deb test-deb

install: $(VENV)/.installed
dev: install

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

# A debootstrapped bookworm root in $(CACHE)/nspawn-bookworm, once per machine.
.PHONY: nspawn-rootfs test-boot
nspawn-rootfs: deps
	SERFBRIDGE_CACHE=$(CACHE) bash .ci/build-nspawn-rootfs

fmt: install
	$(VENV)/bin/ruff format serfbridge tests bench
	$(VENV)/bin/ruff check --fix serfbridge tests bench

# The import contracts ([importlinter] in setup.cfg) run last: ruff and mypy say what is
# wrong inside a module, lint-imports what is wrong between them.
lint: install
	$(VENV)/bin/ruff check serfbridge tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache

# Every module and what it imports (grimp, as the contracts see it); fails on a cycle.
import-graph: install
	$(PY) .ci/import-graph

# A fresh venv every time; `rm -rf build` so no stale module from an older tree gets in.
test-wheel:
	rm -rf build $(TEST_VENV) dist/serfbridge-*.whl
	python3 -m venv $(TEST_VENV)
	$(TEST_VENV)/bin/pip install -q -U pip
	$(TEST_VENV)/bin/pip wheel -q --no-deps -w dist .
	$(TEST_VENV)/bin/pip install -q "$$(ls dist/serfbridge-*-py3-none-any.whl)[test]"

test: deps kube-apiserver test-wheel
	SERFBRIDGE_TEST_INSTALLED=1 $(TEST_VENV)/bin/pytest -q --ignore=$(BOOT_TESTS)

# The .deb installed with apt-get on a fresh copy of the bookworm root, booted under a real
# systemd (systemd-nspawn -b, host network); the lab apiserver runs on the host.
test-boot: install deb nspawn-rootfs kube-apiserver
	SERFBRIDGE_CACHE=$(CACHE) $(VENV)/bin/pytest -q -p no:cacheprovider $(BOOT_TESTS)

# The to-serf and to-k8s suites against /usr/bin/serfbridge from the .deb (installed on
# this host with apt-get), on Debian's python3 and python3-* libraries.
test-deb: deb kube-apiserver
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --reinstall \
	  ./dist/serfbridge_$$(dpkg-parsechangelog -S Version)_all.deb
	/usr/bin/python3 -m venv --clear --system-site-packages $(DEB_TEST_VENV)
	$(DEB_TEST_VENV)/bin/pip install -q 'pytest>=8' 'pytest-timeout>=2.2'
	SERFBRIDGE_TEST_INSTALLED=1 SERFBRIDGE_TEST_SYSTEM_LIBS=1 SERFBRIDGE_BIN=/usr/bin \
	  SERFBRIDGE_SHIM=/usr/lib/serfbridge/serf-event-handler \
	  $(DEB_TEST_VENV)/bin/pytest -q -p no:cacheprovider $(DEB_TESTS)

test-unit: install
	$(VENV)/bin/pytest -q -m "not integration"

bench: deps kube-apiserver install
	$(PY) -m bench

# One benchmark alone: gossip change -> EndpointSlice in the API, next to its floor.
bench-imports: deps kube-apiserver install
	$(PY) -m bench bench_imports

docs: install
	$(PY) -m serfbridge.cli.reference > docs/configuration.md

demo: deps kube-apiserver install
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
# It runs in the wheel's test venv (made by `make test`, or here when missing), as `make test`.
test-docker: deps kube-apiserver
	@[ -x $(TEST_VENV)/bin/pytest ] || $(MAKE) test-wheel
	SERFBRIDGE_TEST_INSTALLED=1 SERFBRIDGE_CACHE=$(CACHE) VENV=$(TEST_VENV) \
	  DOCKER_TESTS="$(DOCKER_TESTS)" bash .ci/test-docker

# dist/serfbridge_<version>_all.deb (debhelper + pybuild, Debian's python3), lintian-clean.
deb: deps
	bash .ci/build-deb dist

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .hypothesis
