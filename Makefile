# Two commands matter on a fresh machine: `make demo` and `make test`.
# Everything else here is what those two are made of.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: help venv demo test test-unit lint bench testenv-up testenv-down clean

help:
	@echo "make demo   - install into $(VENV) and run the embedded demo on real Binance trades"
	@echo "make test   - bring up RabbitMQ + a real Kubernetes control plane, run every test"
	@echo "make bench  - engine and worker benchmarks (figures go to docs/BENCHMARKS.md)"

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

demo: venv
	$(BIN)/trailingstop run examples/trailingstop.yaml

# The test environment is real: RabbitMQ and kube-apiserver/controller-manager/etcd built from the
# Go module proxy (cached under ~/.cache/trailingstop). See docs/DEVELOPING.md.
test: venv
	scripts/testenv up
	eval "$$(scripts/testenv env)" && $(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests (exit 5): failing" >&2; fi; \
	  exit $$rc

test-unit: venv
	$(BIN)/python -m pytest -m unit $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check trailingstop tests
	$(BIN)/mypy

bench: venv
	$(BIN)/python -m trailingstop.bench engine

testenv-up:
	scripts/testenv up

testenv-down:
	scripts/testenv down

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis
