# Quick start: `make demo` and `make test`. Each creates .venv in the repo root if missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.demo-installed

.PHONY: test lint demo bench-edt configs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall whenever the project metadata changes. torch/torchvision are pinned in
# pyproject.toml and resolved in the same command as everything else.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,bench]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

$(DEMO_STAMP): pyproject.toml | $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,bench,demo]'
	touch $(DEMO_STAMP)

# CE vs Contextrast on the built-in real MRI slices (inia19), CPU only; results in runs/demo/.
demo: $(DEMO_STAMP)
	$(BIN)/python -m contextrast.demo

bench-edt: $(STAMP)
	$(BIN)/python benchmarks/distance_transform.py

configs: $(STAMP)
	$(BIN)/python tools/make_configs.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
