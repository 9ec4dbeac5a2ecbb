# Two entry points: `make demo` (base install + train + multi-view eval on the built-in dataset) and
# `make test` (install with the test extras + the whole suite). Both create .venv on first use; each
# has its own stamp, so running one never skips the other's install.
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= workdirs/demo
CONFIG ?= configs/synthetic/tubevit_tiny.py

.PHONY: install install-test demo test clean

$(VENV)/bin/python:
	python3 -m venv $(VENV)

$(VENV)/.installed-base: setup.py pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: setup.py pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps jax2onnx==0.17.1  # setup.py, ONNX: why --no-deps
	touch $@

install: $(VENV)/.installed-base
install-test: $(VENV)/.installed-test

demo: install
	rm -rf $(DEMO_DIR)
	$(PY) -m sparse_tubes train --config=$(CONFIG) --workdir=$(DEMO_DIR)
	$(PY) -m sparse_tubes evaluate --config=$(CONFIG) --workdir=$(DEMO_DIR)

test: install-test
	$(PY) -m pytest -q -n 3 --dist worksteal --durations=15 tests  # why 3 workers on 2 cores: docs/performance.md

clean:
	rm -rf $(VENV) workdirs *.egg-info
