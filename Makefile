# QuantTrade real-time backbone. `make dev` runs the whole backend locally; `make test` runs every suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: dev test unit integration e2e infra-test lint bench soak synth deploy destroy layers asyncapi clean

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

## dev: the whole backend locally (gateway, moto, pumps, simulator) on 127.0.0.1:8081
dev: $(STAMP)
	$(PY) -m local dev

## test: every suite (lint, unit, integration, infra, e2e with a real browser)
test: $(STAMP)
	bash scripts/ensure_chromium.sh
	$(PY) -m ruff check .
	$(PY) -m pytest -q -p no:cacheprovider

unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

integration: $(STAMP)
	$(PY) -m pytest -q tests/integration

e2e: $(STAMP)
	bash scripts/ensure_chromium.sh
	$(PY) -m pytest -q tests/e2e

infra-test: $(STAMP)
	$(PY) -m pytest -q tests/infra

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

## bench: figures, printed and written to bench/results.json (not pass/fail)
bench: $(STAMP)
	$(PY) -m bench

## soak: 2,000 connections for a minute on the local stack; figures to bench/soak-results.json
soak: $(STAMP)
	$(PY) -m bench.soak

## synth: the CloudFormation template, offline (no AWS credentials, no Docker)
synth: $(STAMP)
	$(PY) app.py

## deploy / destroy: need AWS credentials and the CDK CLI (npm install -g aws-cdk)
deploy: $(STAMP)
	cdk deploy --app "$(PY) app.py" --require-approval never

destroy: $(STAMP)
	cdk destroy --app "$(PY) app.py" --force

layers: $(STAMP)
	$(PY) -m infra.layers_build

asyncapi: $(STAMP)
	$(PY) scripts/generate_asyncapi.py > docs/asyncapi.yaml

clean:
	rm -rf $(VENV) cdk.out .build .pytest_cache .ruff_cache .mypy_cache
