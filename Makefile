# The two entry points of README.md. Both build .venv from nothing with the pinned versions.
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: venv demo test lint bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	RAY_USAGE_STATS_ENABLED=0 $(VENV)/bin/trilevel demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-logo

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-logo
	$(VENV)/bin/pytest -q

bench: $(STAMP)
	$(VENV)/bin/python bench/search_step.py
	$(VENV)/bin/python bench/data_pipeline.py
	$(VENV)/bin/python bench/orchestration.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .import_linter_cache *.egg-info
