# serfbridge developer commands. `make install` once, then `make test` / `make demo`.
VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(VENV)/bin/pip
CACHE   ?= /var/cache/serfbridge
DEBS    := serf etcd-server etcd-client golang-go rsync dpkg-dev systemd curl openssl

.PHONY: install deps kube-apiserver lint fmt test test-unit test-docker bench demo clean

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

bench: install
	$(PY) -m bench

demo: install deps kube-apiserver
	$(PY) -m serfbridge.lab.demo

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .hypothesis
