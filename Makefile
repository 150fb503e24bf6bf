# Two entry points, each sets everything up from nothing:
#   make quickstart   install, then fine-tune bundled tiny.en on the shipped data (CPU, minutes)
#   make test         install, then lint and run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: quickstart test lint install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Re-install whenever pyproject.toml changes. torch is pinned in pyproject.toml; on the
# dev machines pip finds the local CPU wheel, so no CUDA build is ever pulled.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

quickstart: install
	$(BIN)/kidwhisper train configs/quickstart.yaml --overwrite

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache

test: lint
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV)
