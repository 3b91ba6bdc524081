# Two commands do all set-up on a fresh machine (CPU or CUDA Linux):
#   make run    creates/reuses .venv, installs, runs the main job on the bundled default
#   make test   creates/reuses .venv, installs with test extras, runs the tests
# torch==2.13.0 is installed first: on this project's CPU machines pip finds a local CPU build; on a CUDA
# box PyPI's Linux wheel is the CUDA build. Any looser spec installed before torch pulls CUDA wheels.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ipg-installed

.PHONY: run test clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/ipg run

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV)
