# Two commands on a fresh machine: `make run` and `make test` (see README.md).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TOOLS := .venv-tools
# Portable llama.cpp: -march=native crashes in ggml's AMX kernel on these hosts, and a
# Lambda layer must run on any x86_64 anyway.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON
# gcsfs 2026.x otherwise probes every bucket over gRPC and waits 60 s against emulators.
export GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT ?= false
STRATO_HOST ?= 127.0.0.1
STRATO_PORT ?= 8080

.PHONY: install run test lint tools bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip wheel setuptools

$(VENV)/.installed: $(BIN)/python pyproject.toml requirements/lock.txt
	$(BIN)/pip install -c requirements/lock.txt -e '.[dev]'
	$(BIN)/pip check
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/strato serve --host $(STRATO_HOST) --port $(STRATO_PORT)

test: install node_modules/.installed
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) $(TOOLS) node_modules .pytest_cache
