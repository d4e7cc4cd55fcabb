# The two commands a newcomer needs: `make up` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
ARGS ?=
# The request path every public request takes, compiled with mypyc (docs/decisions/0014):
# the same typed source as C extensions beside it; `make pure` removes them.
COMPILED := gateway/proxy gateway/accesslog gateway/config gateway/routes \
	mesh/api/openapi mesh/api/routing mesh/client/balancing mesh/client/callbacks mesh/client/chain \
	mesh/client/client mesh/client/decoding mesh/client/health mesh/client/picking mesh/client/targets \
	mesh/client/zones \
	mesh/resilience/breaker mesh/resilience/bulkhead mesh/resilience/outlier mesh/resilience/policy \
	mesh/resilience/ratelimit mesh/resilience/retry mesh/resilience/window mesh/security/tokens \
	mesh/telemetry/metrics mesh/telemetry/tracecontext mesh/telemetry/tracing \
	mesh/transport/exchange mesh/transport/http_client mesh/transport/nats mesh/transport/server
COMPILE_STAMP := src/build/.compiled

# `make image`: the container image of every process (docs/decisions/0021), tagged
# $(IMAGE):<version>-<git sha> and $(IMAGE):dev; podman or docker, whichever is installed.
IMAGE ?= localhost/meshop
BASE ?= python:3.11-slim
CONTAINER_ENGINE ?=

.PHONY: up test test-system lint typecheck unit bench clean compile pure image

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $(STAMP)

# Rebuilt when any source changes, not only their own (compiled code is typed against the
# rest), and when this file (the list) does.
$(COMPILE_STAMP): Makefile $(STAMP) $(wildcard src/meshop/*.py src/meshop/*/*.py src/meshop/*/*/*.py src/meshop/*/*/*/*.py)
	@echo "compiling the request path with mypyc: $(words $(COMPILED)) modules, a minute or two" \
		"(log: src/build/mypyc.log; to run pure Python instead: make pure && $(BIN)/meshop up)"
	mkdir -p src/build
	cd src && ../$(BIN)/mypyc $(COMPILED:%=meshop/%.py) >build/mypyc.log 2>&1 || { tail -40 build/mypyc.log; exit 1; }
	find src -name '*.so' -exec touch {} +  # built now, whatever the build copied (it keeps old files' times)
	touch $@

compile: $(COMPILE_STAMP)

pure:
	find src -name '*.so' -delete
	rm -rf src/build

up: $(STAMP) compile
	$(BIN)/meshop up $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench deploy examples hatch_build.py
	$(BIN)/ruff format --check src tests bench deploy examples hatch_build.py
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck compile
	$(BIN)/pytest

# Slow system suites, run by .ci/run after `make test`: every benchmark the README names,
# in its shortest mode, on the compiled build; the chaos run, schemathesis, the container
# image and the lab (marker `system`), each with its own timeout.
test-system: compile
	$(BIN)/pytest -m "bench or system"

image: compile
	$(BIN)/python deploy/image/build.py --image $(IMAGE) --base $(BASE) $(if $(CONTAINER_ENGINE),--engine $(CONTAINER_ENGINE))

bench: $(STAMP) compile
	$(BIN)/python bench/checkout.py

clean:
	rm -rf $(VENV) .meshop .pytest_cache .mypy_cache .ruff_cache src/build build/image
	find src -name '*.so' -delete
