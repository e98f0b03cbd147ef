# Set-up and entry points. Everything installs into ./.venv from the project's own files.
#   make quickstart   install, then run experiments/quickstart.yaml end to end
#   make test         install with test extras, then run the whole suite (what CI runs)
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch first, pinned: on CPU machines pip takes the local CPU build instead of a multi-GB CUDA one.
TORCH ?= torch==2.13.0

.PHONY: install install-dev quickstart test clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

quickstart: install
	$(BIN)/agentworld run experiments/quickstart.yaml

test: install-dev
	$(BIN)/python -m pytest -q -rs --durations=10

clean:
	rm -rf $(VENV) runs
