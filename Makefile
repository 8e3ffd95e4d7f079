# Two user-facing commands: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast lint install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch comes first and pinned (the CPU build); the rest resolves around it.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install --quiet --disable-pip-version-check uv
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m flows.demo

# pytest workers: 2 halves the wall time on two cores, but there a Ray node of the test cluster was once
# declared dead (missed heartbeats) while the stack booted beside it; one worker is the safe default.
# Tests sharing the session's Ray cluster stay on one worker, the stack's on one (tests/conftest.py).
TEST_WORKERS ?= 1

test: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest -q --timeout=900 -n $(TEST_WORKERS) --dist loadgroup

# everything but the tests that start servers, clusters or whole pipelines (marked slow)
test-fast: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest -q --timeout=900 -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache
