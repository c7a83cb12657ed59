# The README's two commands. Each creates .venv if missing, installs the pinned
# stack into it (skipped when the pins have not changed), then runs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DIR ?= demo_out
# Offline by design: nothing may fetch weights or data at run time.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1

.PHONY: demo test lint install install-dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: requirements.lock pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -r requirements.lock -e .
	touch $@

$(VENV)/.installed-dev: requirements-dev.lock $(VENV)/.installed
	$(BIN)/python -m pip install -q -r requirements-dev.lock
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: install
	mkdir -p $(DEMO_DIR)
	$(BIN)/probe extract demo --out $(DEMO_DIR)/demo.h5
	$(BIN)/probe fit $(DEMO_DIR)/demo.h5 --method erm,reweight,cma --out $(DEMO_DIR)/run --overwrite
	$(BIN)/probe report $(DEMO_DIR)/run --format markdown --out $(DEMO_DIR)/run/report.md --plots $(DEMO_DIR)/run
	@echo "Demo outputs: $(DEMO_DIR)/run (report.md, *.png, results.jsonl, summary.json, heads/)"

# In parallel, one pytest-xdist worker per core (tests/conftest.py gives each its share of
# the cores as threads); `$(BIN)/python -m pytest tests/x.py` alone runs in one process.
PYTEST_WORKERS ?= auto

test: install-dev
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS)

lint: install-dev
	$(BIN)/ruff check .

clean:
	rm -rf $(DEMO_DIR) .pytest_cache .ruff_cache
