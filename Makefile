# Two commands do everything on a fresh machine:  make run   and   make test
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
CHECKPOINT := var/checkpoints/tiny
PYTEST := $(PY) -m pytest
# Debian packages the tests drive for real: Prometheus + promtool, Chromium, the Docker engine.
APT_PACKAGES := prometheus chromium docker.io debootstrap

.PHONY: help setup run test test-unit test-integration test-e2e test-docker bench bench-gpu bench-scaleout monitor plan \
        dashboards images lint system-deps clean

help:
	@echo "make run               start Triton + the web UI / OpenAI API on the local checkpoint (MODEL_PATH=... for a real model)"
	@echo "make test              every test suite (unit, integration, e2e); installs what it needs"
	@echo "make test-unit | test-integration | test-e2e | test-docker"
	@echo "make bench             local benchmark: 1 vs 16 streaming clients, through Triton and the frontend"
	@echo "make bench-gpu         GPU engine benchmark (needs an NVIDIA GPU)"
	@echo "make bench-scaleout    one Triton per GPU behind the frontend: capacity with 1 and N, a replica started under load"
	@echo "                       (SCALEOUT_ARGS='--gpus 2'; without a GPU: the same flow on the CPU, tiny checkpoint)"
	@echo "make monitor           a local Prometheus scraping the running stack"
	@echo "make plan              autoscaling simulator: compare scaling policies on traffic traces"
	@echo "make images            build the Triton and frontend container images"
	@echo "make dashboards        regenerate the Grafana dashboards JSON"

$(VENV)/.installed: pyproject.toml requirements-triton.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[frontend,test]'
	$(PIP) install -q --no-deps -r requirements-triton.txt
	touch $@

$(CHECKPOINT)/config.json: | $(VENV)/.installed
	$(PY) -m backend_python.checkpoint --out $(CHECKPOINT)

# checkov conflicts with our pins, so it lives in a virtualenv of its own.
$(VENV)-checkov/.installed:
	$(PYTHON) -m venv $(VENV)-checkov
	$(VENV)-checkov/bin/pip install -q checkov==3.3.30
	touch $@

system-deps:
	@missing=""; \
	command -v prometheus >/dev/null || missing="$$missing prometheus"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v dockerd >/dev/null || missing="$$missing docker.io"; \
	command -v debootstrap >/dev/null || missing="$$missing debootstrap"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; fi; \
	fi

setup: $(VENV)/.installed $(CHECKPOINT)/config.json

run: setup
	$(PY) -m stack.run

test: setup system-deps $(VENV)-checkov/.installed
	$(PYTEST) -m "unit or integration or e2e" -p no:cacheprovider $(PYTEST_ARGS)

test-unit: setup $(VENV)-checkov/.installed
	$(PYTEST) -m unit $(PYTEST_ARGS)

test-integration: setup system-deps
	$(PYTEST) -m integration $(PYTEST_ARGS)

test-e2e: setup system-deps
	$(PYTEST) -m e2e $(PYTEST_ARGS)

test-docker: setup system-deps
	$(PYTEST) -m docker $(PYTEST_ARGS)

bench: setup
	$(PY) -m bench.local

bench-gpu: setup
	$(PY) -m bench.gpu

bench-scaleout: setup
	$(PY) -m bench.scaleout $(SCALEOUT_ARGS)

monitor: setup system-deps
	$(PY) -m stack.prometheus

# The scaling policies compared on the H200 pod (planner/README.md); the schedule is learnt from another day.
PLAN := $(PY) -m planner --overlay k8s/overlays/gpu --profile planner/profiles/h200-qwen3-vl-4b.json --seed 1 --out docs/planner/h200 --compare
plan: setup
	$(PLAN) --trace daynight --schedule-from daynight
	$(PLAN) --trace burst
	$(PLAN) --trace flash
	$(PLAN) --trace ramp

images: setup system-deps
	docker/build.sh

dashboards: setup
	$(PY) -m monitoring.grafana.dashboards --out monitoring/grafana/dashboards

lint: setup
	$(PY) -m compileall -q wire_contract backend_python frontend stack clients planner monitoring bench
	$(PY) k8s/sync_from_monitoring.py --check

clean:
	rm -rf var/log var/triton-backends .pytest_cache
