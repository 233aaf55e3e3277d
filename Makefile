# evsed developer entry points. `make demo` and `make test` are the README's two commands.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup system-deps demo test lint typecheck bench clean

# Debian packages the tests use: journald and busctl (systemd), dbus-daemon (dbus).
system-deps:
	@if ! command -v busctl >/dev/null || [ ! -x /lib/systemd/systemd-journald ] \
		|| ! command -v dbus-daemon >/dev/null; then \
		apt-get update && apt-get install -y systemd dbus-daemon; fi

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP) system-deps
	$(BIN)/python -m testcsms.demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check service hal testcsms

typecheck: $(STAMP)
	$(BIN)/mypy --strict service hal

test: $(STAMP) system-deps lint typecheck
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python -m bench.roundtrip

clean:
	rm -rf $(VENV) demo-state .pytest_cache .mypy_cache .ruff_cache
