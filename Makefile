# Everything a fresh machine needs is installed by these targets themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install demo dev test lint format bench lock clean

help:
	@echo "make demo   the real pipeline on an emulated AWS and GCP on this machine (main job);"
	@echo "            CLOUD=aws or CLOUD=gcp runs one"
	@echo "make dev    keep the local pipeline and its upload page running (Ctrl-C stops it);"
	@echo "            CLOUD=gcp runs it on the emulated GCP"
	@echo "make test   every test: core, functions on emulators, infrastructure under Pulumi mocks"
	@echo "make bench  benchmarks, printed as ratios against baselines measured in the same run"
	@echo "make lint   ruff check and format check"
	@echo "make lock   re-resolve requirements.lock from pyproject.toml"

# pip compiles bytecode on install (uv would not by default): with
# PYTHONDONTWRITEBYTECODE set, that step is what keeps pulumi_aws imports fast.
$(INSTALLED): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -qq --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install -qq --disable-pip-version-check --no-deps -e .
	touch $@

install: $(INSTALLED)

CLOUD ?= both
demo: install
	$(BIN)/python -m functions.local.demo --cloud $(CLOUD)

# CLOUD=aws or CLOUD=gcp picks the cloud; else the stack config's (aws by default).
dev: install
	$(BIN)/imagepipe dev $(if $(filter aws gcp,$(CLOUD)),--cloud $(CLOUD))

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install
	$(BIN)/python bench/core_bench.py
	$(BIN)/python bench/memory_bench.py
	$(BIN)/python bench/local_bench.py
	$(BIN)/python bench/load_bench.py

lock:
	$(BIN)/python -m pip install --quiet uv
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 --no-header -o requirements.lock

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .ruff_cache demo-out bench/out
