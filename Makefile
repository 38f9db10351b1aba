# Two commands on a fresh machine: `make demo` and `make test`. Both install what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
DEMO_OUT ?= out/demo

.PHONY: install demo test clean

install: $(INSTALLED)

# torch first, pinned: the CPU wheel on this machine's disk (an unpinned torch pulls a CUDA build).
$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[cpu,serve,ray,test]'
	touch $@

demo: install
	$(VENV)/bin/gemma-export export -o $(DEMO_OUT) --force
	$(VENV)/bin/gemma-export generate $(DEMO_OUT) --prompt "The capital of France is" --max-new-tokens 32

test: install
	$(PY) -m pytest -q --durations=30 tests

clean:
	rm -rf $(VENV) out .pytest_cache
