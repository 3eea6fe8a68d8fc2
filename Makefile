# The two entry points of README.md. Both build .venv from nothing with the pinned versions.
# --no-compile: pip would byte-compile every file of torch, Ray and MLflow (half the install's CPU time);
# Python compiles the modules actually imported, once, on first use.
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: venv demo test lint bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --no-compile -c constraints.txt -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	RAY_USAGE_STATS_ENABLED=0 $(VENV)/bin/trilevel demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-logo

# Two test processes (one per core): the end-to-end tests mostly wait on processes they started, the unit
# tests fill that time. Tests that share a cluster or the in-process Ray stay in one process (xdist_group);
# the out-of-memory test needs the machine to itself, so it runs after.
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-logo
	$(VENV)/bin/pytest -q -n 2 --dist loadgroup -m "not exclusive"
	$(VENV)/bin/pytest -q -m exclusive

bench: $(STAMP)
	$(VENV)/bin/python bench/search_step.py
	$(VENV)/bin/python bench/data_pipeline.py
	$(VENV)/bin/python bench/orchestration.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .import_linter_cache *.egg-info
