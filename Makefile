# `make demo` and `make test` do all set-up on a fresh Debian machine.
.PHONY: setup demo test faults bench lock clean dist

VENV := .venv
BIN := $(VENV)/bin

# Python writes and reuses its bytecode here even where the environment says not to
# (PYTHONDONTWRITEBYTECODE=1 on this machine): the tests start ~180 agent processes and 9
# pytest processes, and without .pyc files each compiled every module it imported again
# (an agent's imports: 0.60 s of CPU against 0.25 s; collecting the tests: 5.3 s against 1.8 s)
export PYTHONDONTWRITEBYTECODE :=

setup:
	@bash deploy/setup.sh test

demo:
	@bash deploy/setup.sh demo
	$(BIN)/loaxa demo

# 8 workers, one test file each, the longest files first (tests/conftest.py, LONGEST_FIRST):
# most tests wait on brokers, agents and browsers (2 cores; 343 tests with the fault suite
# twice, 05/12/2026 morning: 4 min 27 s with 6 workers in xdist's order, 3 min 21 s with 8
# longest first; 365 tests that afternoon on a slower machine: 3 min 55 s with ~1.8 cores
# busy, then 3 min 01 s once bytecode was written and reused, below)
test: setup
	$(BIN)/python -m pytest -q -n 8 --dist loadfile --no-loadscope-reorder

bench: setup
	$(BIN)/python -m bench

# Re-pin after changing dependencies (no URLs are written; uv.lock is not committed).
lock:
	uv pip compile --universal pyproject.toml --extra dev --extra pi \
	  --override requirements/overrides.txt -o requirements/lock.txt --python-version 3.11

# A wheel set for an offline install on a Raspberry Pi (PLATFORM=aarch64|armv7l|native).
dist:
	@bash deploy/dist.sh

clean:
	rm -rf $(VENV) .pytest_cache
