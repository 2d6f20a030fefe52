# Quick start: `make demo` and `make test`. Each creates .venv in the repo root if missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test lint format demo bench-edt clean

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

demo: $(STAMP)
	@echo "make demo trains and compares CE and Contextrast on the built-in digits set;"
	@echo "it arrives with the trainer (issue 5). Until then: make test, and see README.md."

bench-edt: $(STAMP)
	$(BIN)/python benchmarks/distance_transform.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
