# Two commands set up everything on a fresh machine:
#   make train   trains LeNet-5 on the embedded MNIST sample (creates .venv on first use)
#   make test    runs the test suite (creates .venv with the test and parity extras)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ARCH ?= lenet5
ARGS ?=

.PHONY: train test clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.train-installed: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[train]'
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[test,parity]'
	touch $@ $(VENV)/.train-installed

train: $(VENV)/.train-installed
	$(PY) -m train.main --arch $(ARCH) $(ARGS)

test: $(VENV)/.test-installed
	$(PY) -m pytest -n 2 --durations=15 $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
