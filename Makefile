# Two commands set up everything on a fresh machine:
#   make train      trains LeNet-5 on the embedded MNIST sample (creates .venv on first use)
#   make test       runs the whole test suite (creates .venv with the test and parity extras)
# and one is for the edit-test loop:
#   make test-fast  the suite without the slow tests and those needing torch/timm/Keras
# Run them in the repository root: the trainer (train/) is not installed, it runs from here.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ARCH ?= lenet5
ARGS ?=

.PHONY: train test test-fast clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.train-installed: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[train]'
	touch $@

$(VENV)/.fast-installed: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.train-installed

$(VENV)/.test-installed: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[test,parity]'
	touch $@ $(VENV)/.fast-installed $(VENV)/.train-installed

train: $(VENV)/.train-installed
	$(PY) -m train.main --arch $(ARCH) $(ARGS)

test: $(VENV)/.test-installed
	$(PY) -m pytest -n 2 --durations=15 $(ARGS)

test-fast: $(VENV)/.fast-installed
	$(PY) -m pytest -n 2 -m "not slow and not parity" $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
