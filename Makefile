# fstore — one command surface. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
PYTEST_ARGS ?=

.PHONY: alerts-test compose-config dashboard help setup system-deps demo test test-unit test-integration test-faults lint bench services-up services-down clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

system-deps: ## install redis-server, prometheus (+ promtool), Java 17, Maven and docker-compose (to validate infra/) with apt if missing (needs root)
	@missing=""; command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	  { command -v prometheus >/dev/null && command -v promtool >/dev/null; } || missing="$$missing prometheus"; \
	  command -v java >/dev/null || missing="$$missing openjdk-17-jre-headless"; \
	  command -v mvn >/dev/null || missing="$$missing maven"; \
	  command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || missing="$$missing docker-compose"; \
	  if [ -n "$$missing" ]; then echo "installing with apt:$$missing"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing) >/dev/null \
	    || { echo "apt-get install$$missing failed: run as root or install them yourself" >&2; exit 1; }; fi

$(STAMP): pyproject.toml
	@echo "setting up $(VENV) (virtualenv + pip install -e .[dev])"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip
	@$(BIN)/python -m pip install -q -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $(STAMP)

setup: system-deps $(STAMP) ## virtualenv, Python packages, system packages and the Kafka / delta-spark jars
	@$(BIN)/fstore services install
	@echo "setup done: $$($(BIN)/fstore --version)"

demo: setup ## the whole pipeline end to end on local services
	@$(BIN)/python -m examples.demo

test: setup ## install and run the whole test suite (unit + integration + faults)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-unit: setup ## fast tests of the pure core
	$(BIN)/python -m pytest -m unit $(PYTEST_ARGS)

test-integration: setup ## tests against real Redis, broker, Spark and Delta files
	$(BIN)/python -m pytest -m integration $(PYTEST_ARGS)

test-faults: setup ## issue 12's fault matrix: one test per fault, real processes on loopback (tests/faults/)
	$(BIN)/python -m pytest -m faults $(PYTEST_ARGS)

lint: setup ## ruff (lint and format) and mypy --strict over the code, the benchmarks and the tests
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy fstore jobs services examples bench tests infra
	$(BIN)/python infra/grafana/dashboard.py --check

bench: setup ## benchmarks (figures go to stdout; see docs/benchmarks.md)
	$(BIN)/python bench/generate_ingest.py
	$(BIN)/python bench/pit_join.py
	$(BIN)/python bench/batch_rebuild.py

services-up: setup ## start local Redis and Apache Kafka broker
	$(BIN)/fstore services up

services-down: ## stop local services
	-$(BIN)/fstore services down

dashboard: setup ## regenerate the Grafana dashboard JSON (infra/grafana/dashboards/fstore.json)
	$(BIN)/python infra/grafana/dashboard.py

alerts-test: system-deps ## promtool: check the Prometheus config and unit-test every alert rule
	cd infra/prometheus && promtool check config prometheus.yml && promtool test rules alerts_test.yml alerts_test_daily.yml

compose-config: system-deps ## validate infra/docker-compose.yml (no Docker engine needed)
	@if docker compose version >/dev/null 2>&1; then docker compose -f infra/docker-compose.yml config -q; \
	  else docker-compose -f infra/docker-compose.yml config -q; fi && echo "infra/docker-compose.yml is valid"

clean: services-down ## remove generated data and state (keeps the virtualenv)
	rm -rf data .fstore feature_repo/data
