# QuantTrade real-time backbone. `make dev` runs the whole backend locally; `make test` runs every suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The repository's import roots (the app and its tooling, the shared layer's package, the Python client) on
# the venv's path, as a .pth file: app.py, scripts/ and bench/ import them without editing sys.path.
DEV_PATHS := $(VENV)/.dev-paths
# npm ci writes this; the pinned CDK CLI and Pyodide (byte code for the Lambda runtime's Python) live in node_modules/.
NODE_STAMP := node_modules/.package-lock.json

# make deploy STAGE=dev CONTEXT="owner=platform-team settings.log_level=DEBUG"
# CONTEXT: space-separated key=value items, each passed as its own `-c`.
# CDK_FLAGS: extra CLI flags, e.g. CDK_FLAGS="--require-approval never" in a pipeline that reviewed the diff.
STAGE ?= dev
CONTEXT ?=
CDK_FLAGS ?=
CONTEXT_ARGS := -c stage=$(STAGE) $(foreach item,$(CONTEXT),-c '$(item)')
CDK := npx --no-install cdk --app "$(PY) app.py" $(CONTEXT_ARGS)
OUTPUTS := .build/outputs-$(STAGE).json

.PHONY: dev test unit integration e2e infra-test lint bench endurance soak synth bootstrap diff deploy destroy layers lock asyncapi clean

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

$(DEV_PATHS): $(STAMP) scripts/dev_paths.py
	$(PY) scripts/dev_paths.py
	touch $(DEV_PATHS)

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund

## dev: the whole backend locally (gateway, moto, pumps, simulator) on 127.0.0.1:8081
dev: $(DEV_PATHS) $(NODE_STAMP)
	$(PY) -m local dev

## test: the static checks (ruff lint and format, mypy on the shared package and the handlers), then every suite
## (unit, integration, infra, e2e with a real browser)
test: $(DEV_PATHS) $(NODE_STAMP)
	bash scripts/ensure_chromium.sh
	$(MAKE) --no-print-directory lint
	$(PY) -m pytest -q -p no:cacheprovider

unit: $(DEV_PATHS)
	$(PY) -m pytest -q tests/unit

integration: $(DEV_PATHS) $(NODE_STAMP)
	$(PY) -m pytest -q tests/integration

e2e: $(DEV_PATHS) $(NODE_STAMP)
	bash scripts/ensure_chromium.sh
	$(PY) -m pytest -q tests/e2e

infra-test: $(DEV_PATHS) $(NODE_STAMP)
	$(PY) -m pytest -q tests/infra

lint: $(DEV_PATHS)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy layers/shared/python/quanttrade_ws layers/shared/python/quanttrade_protocol handlers

## bench: figures, printed and written to bench/results.json (not pass/fail)
bench: $(DEV_PATHS) $(NODE_STAMP)
	$(PY) -m bench

## endurance: make dev itself for an hour (memory, ticks, /ready, latency), then 1,000 and 5,000 clients and Ctrl-C
endurance: $(DEV_PATHS) $(NODE_STAMP)
	$(PY) -m bench.endurance

## soak: 2,000 connections for a minute on the local stack; figures to bench/soak-results.json
soak: $(DEV_PATHS) $(NODE_STAMP)
	$(PY) -m bench.soak

## synth: the CloudFormation template, offline (no AWS credentials, no Docker); prints each function's size
synth: $(DEV_PATHS) $(NODE_STAMP)
	$(PY) app.py $(CONTEXT_ARGS)

## bootstrap / diff / deploy / destroy: need AWS credentials; the CDK CLI is the one package-lock.json pins.
## The CLI asks before broadening IAM (deploy) and before deleting (destroy) unless CDK_FLAGS says otherwise.
bootstrap: $(DEV_PATHS) $(NODE_STAMP)
	$(CDK) bootstrap $(CDK_FLAGS)

diff: $(DEV_PATHS) $(NODE_STAMP)
	$(CDK) diff $(CDK_FLAGS)

deploy: $(DEV_PATHS) $(NODE_STAMP)
	mkdir -p .build
	$(CDK) deploy --outputs-file $(OUTPUTS) $(CDK_FLAGS)

destroy: $(DEV_PATHS) $(NODE_STAMP)
	$(CDK) destroy $(CDK_FLAGS)

## layers: build the arm64 dependency layer from requirements.lock (cached in .build/)
layers: $(DEV_PATHS) $(NODE_STAMP)
	$(PY) -m infra.layers_build

## lock: re-resolve requirements.txt into requirements.lock (pins and hashes for the Lambda runtime)
lock: $(DEV_PATHS)
	$(PY) -m infra.layers_build --lock

asyncapi: $(DEV_PATHS)
	$(PY) scripts/generate_asyncapi.py > docs/asyncapi.yaml

clean:
	rm -rf $(VENV) node_modules cdk.out .build .pytest_cache .ruff_cache .mypy_cache
