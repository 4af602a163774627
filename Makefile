# The README's two commands are `make demo` and `make test`; both work on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DR := $(VENV)/bin/digitreader
# Where the MNIST files are (read, never copied into the project).
export DIGITREADER_DATA_DIR ?= $(abspath ../shared/datasets)

.PHONY: install install-dev demo test lint bench clean

# An editable install leaves the project's own modules uncompiled, and with PYTHONDONTWRITEBYTECODE set
# (as on CI) every process would compile them again (~60 ms each: the CLI, the pool's fork server).
COMPILE = $(PY) -m compileall -q digitreader workers training

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Runtime only (CPU onnxruntime; no torch).
$(VENV)/.runtime: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[cpu]'
	$(COMPILE)
	touch $@

# Runtime + training (torch==2.13.0 CPU) + test tools.
$(VENV)/.dev: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[cpu,train,dev]'
	$(COMPILE)
	touch $@ $(VENV)/.runtime

install: $(VENV)/.runtime
install-dev: $(VENV)/.dev

# Reads the sample scans into a new batch (the database in DIGITREADER_HOME, default
# ~/.local/share/digitreader) and prints the results as CSV; --force so every run shows them.
demo: install
	@batch=$$($(DR) submit --force examples/scans/) && $(DR) export "$$batch" --format csv

test: install-dev
	$(PY) -m pytest

lint: install-dev
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy digitreader workers training tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
