# One-command entry points. Each creates (or reuses) the virtual environment .venv.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
ARGS   ?=

.PHONY: train test test-asan lint venv clean

$(VENV)/.installed: setup.cfg setup.py pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[test]' ruff
	touch $@

venv: $(VENV)/.installed

## Train the default LeNet-style CNN on the bundled handwritten digits (extra flags: ARGS="...").
train: $(VENV)/.installed
	$(VENV)/bin/gpuconv train $(ARGS)

## Run the test suite (PyTorch cross-checks run when torch is installed in .venv).
test: $(VENV)/.installed-test
	$(PY) -m pytest -q $(ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; rc=0; fi; exit $$rc

## Emulator AddressSanitizer tier (its own pytest process).
test-asan: $(VENV)/.installed-test
	$(PY) -m pytest -q -m asan tests/test_emulator_asan.py; rc=$$?; [ $$rc -eq 5 ] && rc=0; exit $$rc

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check gpuconv tests scripts

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
