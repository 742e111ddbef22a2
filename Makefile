# Three commands matter on a fresh machine: `make demo`, `make test` and `make cluster-demo`.
# Everything else here is what those are made of.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: help venv demo test test-unit lint bench bench-engine bench-workers bench-operator bench-history \
	bench-manifests bench-node bench-node-stops testenv-up testenv-down image images cluster-demo manifests manifests-check lint-install \
	crd clean

help:
	@echo "make demo   - install into $(VENV) and run the embedded demo on real Binance trades"
	@echo "make test   - bring up RabbitMQ + a real single-node Kubernetes cluster, build the images, run every test"
	@echo "make cluster-demo - the same cluster, helm install of the chart, examples/trailingstop.yaml until Filled"
	@echo "make bench  - engine, worker, operator, history and manifest benchmarks (figures go to docs/BENCHMARKS.md)"
	@echo "make image  - docker build the one image of every role (and load it into the test node)"
	@echo "make manifests / lint-install / crd - regenerate manifests/, lint the install paths, regenerate the CRD"

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

demo: venv
	$(BIN)/trailingstop run examples/trailingstop.yaml

# The test environment is real: RabbitMQ and a single-node Kubernetes cluster whose binaries are
# built from the Go module proxy (cached under ~/.cache/trailingstop), and the images the node
# runs, built from this tree (Docker's layer cache makes a rebuild after a code change quick).
# See docs/DEVELOPING.md.
test: venv
	scripts/testenv up
	scripts/testenv images
	eval "$$(scripts/testenv env)" && $(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests (exit 5): failing" >&2; fi; \
	  exit $$rc

test-unit: venv
	$(BIN)/python -m pytest -m unit $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check trailingstop tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: bench-engine bench-workers bench-operator bench-history bench-manifests

bench-engine: venv
	$(BIN)/python benchmarks/engine.py

# A month of aggTrades through `backtest --month` from a local public-data host (BENCH_ARGS: --per-day N).
bench-history: venv
	$(BIN)/python benchmarks/history.py $(BENCH_ARGS)

bench-manifests: venv
	$(BIN)/python benchmarks/manifests.py

bench-workers: venv
	scripts/testenv up
	eval "$$(scripts/testenv env)" && $(BIN)/python benchmarks/workers.py

# The operator with 1,000 stops, its workers real pods: bench-node-stops' part (b).
bench-operator: venv
	$(MAKE) bench-node-stops BENCH_ARGS="--part b"

bench-node: venv
	scripts/testenv up
	scripts/testenv images
	eval "$$(scripts/testenv env)" && $(BIN)/python benchmarks/node.py

# Stops on the node (issue 16): apply -> Tracking while a symbol's pods start, and 1,000 stops over 20
# symbols with real pods (BENCH_ARGS: --part a|b, --symbols N, --stops N, --speed TRADES_PER_S, --json).
bench-node-stops: venv
	scripts/testenv up
	scripts/testenv images
	eval "$$(scripts/testenv env)" && $(BIN)/python benchmarks/node_stops.py $(BENCH_ARGS)

# The CRD is generated from the contracts; the chart's copy and manifests/ follow it.
crd: venv
	$(BIN)/trailingstop crd > crds/trailingstops.trailingstop.dev.yaml

# The one image of every role, built from the Dockerfile by the Docker engine scripts/testenv
# installs and starts when missing (tagged trailingstop.local/trailingstop:dev, or $TESTENV_IMAGE),
# and loaded into the test node when it runs. Outside this project's machines, plain
# `docker build -t ghcr.io/trailingstop/trailingstop:0.1.0 .` builds the same image on the
# official Python base.
image:
	scripts/testenv images trailingstop

# The project's image, the fake Binance's and the quickstart RabbitMQ's.
images:
	scripts/testenv images

# The chart on the real node: examples/trailingstop.yaml until Filled (scripts/cluster-demo).
cluster-demo:
	scripts/cluster-demo

# manifests/ rendered from charts/trailingstop-operator (and the chart's CRD copy synced from crds/).
manifests: venv
	eval "$$(scripts/testenv env)" && $(BIN)/python scripts/render-manifests

manifests-check: venv
	eval "$$(scripts/testenv env)" && $(BIN)/python scripts/render-manifests --check

# hadolint, helm lint and checkov over the Dockerfile, chart and manifests (linters from PyPI,
# in their own venv under ~/.cache/trailingstop).
lint-install: venv
	scripts/lint-tools hadolint Dockerfile
	eval "$$(scripts/testenv env)" && helm lint --strict charts/trailingstop-operator --kube-version "$${TESTENV_K8S_VERSION#v}"
	eval "$$(scripts/testenv env)" && $(BIN)/python -m pytest tests/e2e/test_install.py -k "checkov or hadolint" $(PYTEST_ARGS)

testenv-up:
	scripts/testenv up

testenv-down:
	scripts/testenv down

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis
