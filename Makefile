# The two entry points of README.md. Both build .venv from nothing with the pinned versions.
# The venv is filled by uv (pinned in constraints.txt, installed into the venv by pip): it unpacks the
# 1.9 GB of torch, Ray and MLflow in ~16 s where pip takes ~2 min on 2 cores. uv does not read pip's
# configuration, so the wheel folders pip is told about (find-links: where a machine keeps its CPU build
# of torch) are passed on. Should uv fail, pip installs the same pins (--no-compile: Python compiles the
# modules actually imported, on first use).
PY ?= python3
# Some machine images (this project's CI among them) set PYTHONDONTWRITEBYTECODE=1. With it, and no .pyc
# in the venv, every process compiles torch, Ray, MLflow and pandas from source at each start: 5-8 s more
# for every Ray worker, trial, Train worker, job driver and MLflow server: much of what the tests and
# small sweeps wait for. Empty means unset to Python: each module is compiled once, on first import.
export PYTHONDONTWRITEBYTECODE :=
VENV := .venv
STAMP := $(VENV)/.installed
FIND_LINKS = $(shell $(PY) -m pip config list 2>/dev/null | sed -n "s/^[^=]*find-links='\(.*\)'$$/\1/p" | tr ' ' '\n' | sort -u)

.PHONY: venv demo test lint bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q -c constraints.txt uv
	$(VENV)/bin/uv pip install -q --python $(VENV)/bin/python $(addprefix --find-links ,$(FIND_LINKS)) \
		-c constraints.txt -e '.[dev]' \
	|| $(VENV)/bin/pip install -q --no-compile -c constraints.txt -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	RAY_USAGE_STATS_ENABLED=0 $(VENV)/bin/trilevel demo

# deptry: every import is a declared dependency (the package's in `dependencies`, tests' and benches' in
# the dev extra too); the two runs and why are in [tool.deptry] of pyproject.toml.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-logo
	$(VENV)/bin/deptry .
	$(VENV)/bin/deptry tests bench --exclude '\.venv' --ignore DEP002,DEP004

# Two test processes (one per core): the end-to-end tests mostly wait on processes they started, the unit
# tests fill that time. Tests that share a cluster or the in-process Ray stay in one process (xdist_group).
# The memory-kill test runs among them: its Ray head runs in a memory cgroup of its own (tests/faults.py), which
# Ray's memory monitor takes for the node's memory, so what the other tests (or anything else on the machine)
# use does not move its threshold; where no such cgroup can be made (not root, no cgroup v1 memory controller)
# it skips, saying why. The image-environment test builds the image lock's venv (uv, from its cache: seconds)
# and runs the RayJob's entrypoint on a 2-node Ray cluster in it (~2 min of one process). The lost-node test
# runs a 3-node Ray cluster (a Train worker and then a whole node killed under one trial). The slowest tests are
# listed, to keep an eye on the 10-minute budget.
test: lint
	$(VENV)/bin/pytest -q -n 2 --dist loadgroup --durations=15

bench: $(STAMP)
	$(VENV)/bin/python bench/search_step.py
	$(VENV)/bin/python bench/data_pipeline.py
	$(VENV)/bin/python bench/orchestration.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .import_linter_cache *.egg-info
