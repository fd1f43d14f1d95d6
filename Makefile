# `make run` and `make test` work on a fresh clone with only python3 installed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-stock test-epoll lint bench clean

$(STAMP): setup.cfg pyproject.toml requirements-pins.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c requirements-pins.txt -e '.[test]' --config-settings editable_mode=compat
	@# build twisted's plugin cache once, where it can be written
	$(BIN)/python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
	@touch $(STAMP)

install: $(STAMP)

run: install
	@examples/run.sh

# The suite, once on each reactor the interceptor runs on: twistd's default
# (epoll), then the opt-in `twistd -r keda-epoll` (see tests/conftest.py).
test: test-stock test-epoll

test-stock: install
	$(BIN)/python -m pytest -q

test-epoll: install
	KEDA_TEST_REACTOR=keda-epoll $(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check keda_proxy tests twisted benchmarks examples

bench: install
	$(BIN)/python benchmarks/bench_routing.py

clean:
	rm -rf $(VENV) *.egg-info build dist
