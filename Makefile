# One-command entry points. Each creates (or reuses) the virtual environment .venv.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
ARGS   ?=

.PHONY: train test test-asan mutants lint venv clean

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
## pytest's exit status 5 (no test collected, e.g. ARGS that select nothing) is a failure.
test: $(VENV)/.installed-test
	$(PY) -m pytest -q $(ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests (ARGS=$(ARGS))" >&2; fi; exit $$rc

## Emulator AddressSanitizer tier (its own pytest process; needs libasan, fails without it).
test-asan: $(VENV)/.installed-test
	$(PY) -m pytest -q -m asan tests/test_emulator_asan.py $(ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test-asan: no ASan test collected: the tier did not run" >&2; fi; exit $$rc

## Plant each bug of tests/mutants.txt in a scratch copy and report the kill rate
## (ARGS="--no-torch" hides PyTorch, ARGS="--only ID,ID" runs some, ARGS="--jobs 2").
mutants: $(VENV)/.installed-test
	$(PY) scripts/mutants.py $(ARGS)

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check gpuconv tests scripts

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
