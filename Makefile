# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck check clean install bench bench-makespan bench-flow bench-flood chaos

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[embedded,test,bench]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/treadle demo

test: $(STAMP)
	$(BIN)/ruff check --no-cache orchestrator workers config tests ops
	$(BIN)/mypy
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check --no-cache orchestrator workers config tests ops
	$(BIN)/ruff format --no-cache --check orchestrator workers config tests ops

chaos: $(STAMP)
	$(BIN)/python ops/chaos/run.py --kill-every 2 --redis-crash-every 5

# Side by side with raw Celery and Dramatiq; BENCH_ARGS=--quick for one run of each.
BENCH_ARGS ?=
bench: $(STAMP)
	$(BIN)/treadle bench --json .treadle/bench/bench.json --plot .treadle/bench/bench.png $(BENCH_ARGS)

bench-makespan: $(STAMP)
	$(BIN)/python ops/bench/makespan.py

bench-flow: $(STAMP)
	$(BIN)/python ops/bench/flow.py

bench-flood: $(STAMP)
	$(BIN)/python ops/bench/flood.py

typecheck: $(STAMP)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .treadle .pytest_cache .mypy_cache .ruff_cache
