# Standing — the four targets of the spec. `demo`, `test` and `bench` install first when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast test-integration bench clean

install: $(STAMP)

$(STAMP): pyproject.toml setup.py streams/_state_codec.c topology/_routing.c
	@test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $(STAMP)

demo: install
	$(BIN)/standing demo $(ARGS)

test: install
	$(BIN)/pytest -q tests

test-fast: install
	$(BIN)/pytest -q tests --ignore=tests/integration

test-integration: install
	$(BIN)/pytest -q tests/integration

bench: install
	$(BIN)/pip install --quiet -e '.[test,bench]'
	$(BIN)/standing bench $(ARGS)

clean:
	rm -rf .standing .pytest_cache
