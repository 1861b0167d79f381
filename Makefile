# The two commands of the README: `make run` (main job) and `make test` (test suite).
# Both install what they need first (scripts/install.sh is idempotent).
SHELL := /bin/bash
PY ?= python3
export LOWRANK_DATA ?= $(abspath ../shared/datasets)

.PHONY: install run test bench

install:
	@bash scripts/install.sh

run: install
	$(PY) -m lowrank compare

test: install
	$(PY) -m pytest tests -p no:cacheprovider

bench: install
	$(PY) benchmarks/run_all.py
