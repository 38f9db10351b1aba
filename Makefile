# Two commands on a fresh machine: `make demo` and `make test`. Both install what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
DEMO_OUT ?= out/demo

# The onnxruntime versions the suite proves beside the installed one (tests/test_onnxruntime_floor.py):
# onnxruntime-gpu's newest release (its CPU build); the floor comes with the dependency floors below.
ONNXRUNTIME_VERSIONS := 1.31.1
ONNXRUNTIME_STAMPS := $(ONNXRUNTIME_VERSIONS:%=$(VENV)/onnxruntime-versions/%/.installed)
# pyproject's lower bounds of what the runtime, the server and the export import, installed together
# (pip resolves the rest) for tests/test_onnxruntime_floor.py; torch stays the venv's pinned one.
DEPENDENCY_FLOORS := onnxruntime==1.27.0 numpy==1.23.3 ml_dtypes==0.5.0 onnx==1.17.0 onnx-ir==0.1.16 \
	onnxscript==0.6.0 safetensors==0.2.8 sentencepiece==0.1.98 tokenizers==0.13.2 jinja2==3.1.6 \
	fastapi==0.100.0 uvicorn==0.15.0 pydantic==2.5.0 prometheus_client==0.8.0 llguidance==1.7.0

.PHONY: install onnxruntime-versions dependency-floors demo test clean

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

dependency-floors: $(VENV)/dependency-floors/.installed

$(VENV)/dependency-floors/.installed: $(INSTALLED) Makefile
	rm -rf $(VENV)/dependency-floors
	$(PY) -m pip install -q --only-binary=:all: --target $(VENV)/dependency-floors $(DEPENDENCY_FLOORS)
	touch $@

demo: install
	$(VENV)/bin/gemma-export export -o $(DEMO_OUT) --force
	$(VENV)/bin/gemma-export generate $(DEMO_OUT) --prompt "The capital of France is" --max-new-tokens 32

# Two workers (pytest-xdist), each module whole on one (its module-scoped exports made once): the
# suite is mostly single-threaded tracing and passes, so on CI's 2 cores this nearly halves it.
test: install onnxruntime-versions dependency-floors
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=30 tests

clean:
	rm -rf $(VENV) out .pytest_cache
