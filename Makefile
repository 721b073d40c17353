# Two commands on a fresh machine: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test browser lint format bench clean

$(BIN)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,beam]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/python demo.py

test: $(BIN)/.installed browser
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q -n 2 --durations=30

# The report's screenshot test runs a headless Chromium (Debian's package, installed if root).
browser:
	@scripts/install_chromium.sh

format: $(BIN)/.installed
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(BIN)/.installed
	$(BIN)/python benchmarks/model_throughput.py

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache *.egg-info
