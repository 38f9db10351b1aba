# Two commands on a fresh machine: `make demo` and `make test`. Both install what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
DEMO_OUT ?= out/demo

# The onnxruntime versions the suite proves beside the installed one (tests/test_onnxruntime_floor.py):
# the floor pyproject states, and onnxruntime-gpu's newest release (its CPU build).
ONNXRUNTIME_VERSIONS := 1.27.0 1.31.1
ONNXRUNTIME_STAMPS := $(ONNXRUNTIME_VERSIONS:%=$(VENV)/onnxruntime-versions/%/.installed)

.PHONY: install onnxruntime-versions demo test clean

install: $(INSTALLED)

# torch first, pinned: the CPU wheel on this machine's disk (an unpinned torch pulls a CUDA build).
$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[cpu,serve,ray,test,eval]'
	touch $@

onnxruntime-versions: $(ONNXRUNTIME_STAMPS)

# the wheel is kept: tests/test_gpu_check.py sends 1.31.1's through the GPU check's pieces
$(VENV)/onnxruntime-versions/%/.installed: $(INSTALLED)
	$(PY) -m pip download -q --no-deps --only-binary=:all: -d $(VENV)/onnxruntime-versions/wheels onnxruntime==$*
	$(PY) -m pip install -q --no-deps --target $(VENV)/onnxruntime-versions/$* \
		$(VENV)/onnxruntime-versions/wheels/onnxruntime-$*-*.whl
	touch $@

demo: install
	$(VENV)/bin/gemma-export export -o $(DEMO_OUT) --force
	$(VENV)/bin/gemma-export generate $(DEMO_OUT) --prompt "The capital of France is" --max-new-tokens 32

test: install onnxruntime-versions
	$(PY) -m pytest -q --durations=30 tests

clean:
	rm -rf $(VENV) out .pytest_cache
