# Two entry points: `make demo` (install + train + multi-view eval on the built-in dataset) and
# `make test` (install with test extras + the whole suite). Both create .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= workdirs/demo
CONFIG ?= configs/synthetic/tubevit_tiny.py

.PHONY: install demo test clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: install
	rm -rf $(DEMO_DIR)
	$(PY) -m sparse_tubes train --config=$(CONFIG) --workdir=$(DEMO_DIR)
	$(PY) -m sparse_tubes evaluate --config=$(CONFIG) --workdir=$(DEMO_DIR)

test: install
	$(PY) -m pytest -q -n 2 --durations=15 tests

clean:
	rm -rf $(VENV) workdirs *.egg-info
