# Two user-facing commands: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast lint install clean gpu-check

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch comes first and pinned (the CPU build); the rest resolves around it. Then the numba kernels are
# compiled once into their cache (srcore/models/kernel_cache.py), not by every process that first uses one.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install --quiet --disable-pip-version-check uv
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -e '.[dev]'
	$(BIN)/python -m srcore.models.kernel_cache
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m flows.demo

# Three pytest workers on two cores (the long tests mostly wait on servers and clusters): the stack's
# tests on one, the training module with its own Ray cluster and MLflow server on another, the other
# tests that need such servers on the third, every other module whole where there is room
# (tests/conftest.py).
TEST_WORKERS ?= 3

test: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest -q --timeout=900 -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder

# everything but the tests that start servers, clusters or whole pipelines (marked slow)
test-fast: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest -q --timeout=900 -m "not slow"

# every GPU-specific check on one CUDA device, one report (bench/gpu_check.py); refuses without a GPU
gpu-check: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python bench/gpu_check.py

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache
