# Two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test test-fast demo lint bench clean

$(STAMP): requirements.txt requirements-dev.txt requirements-assets.txt requirements-dev-no-deps.txt \
    pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -r requirements-assets.txt -r requirements-dev-no-deps.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -n 2 --dist worksteal -q --durations=25 tests

# Everything but the tests marked slow: those that start processes (CLI subprocesses, kill/resume,
# several hosts) or train whole runs.
# Compiled programs are kept in .jax-test-cache between runs, so a rerun skips most compiling.
test-fast: $(STAMP)
	JAX_COMPILATION_CACHE_DIR=$(CURDIR)/.jax-test-cache JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 \
	  $(PY) -m pytest -n 2 --dist worksteal -q -m "not slow" tests

lint: $(STAMP)
	$(VENV)/bin/ruff check adapters_jax experiments scripts tests

demo: $(STAMP)
	$(PY) -m experiments.train --config=experiments/configs/quickstart.py --workdir=workdirs/quickstart

clean:
	rm -rf $(VENV) workdirs .jax-test-cache
