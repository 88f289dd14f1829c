# Two entry points: `make demo` and `make test`. Both create .venv when missing and install the project with the
# newest releases its bounds allow; `make test-oldest` runs the suite again in .venv-oldest with the oldest ones.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
OLDEST_VENV ?= .venv-oldest
OLDEST_PY := $(OLDEST_VENV)/bin/python
# CPU build of torch by default (a bare `torch` requirement may pull a multi-GB CUDA build).
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test test-oldest install clean

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --progress-bar on "$(TORCH_SPEC)"
	$(PY) -m pip install --progress-bar on -e ".[test]"
	touch $@

$(OLDEST_VENV)/.installed: pyproject.toml Makefile .ci/lower_bounds.py
	test -x $(OLDEST_PY) || $(PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_PY) -m pip install -q --upgrade pip
	$(OLDEST_PY) -c "import torch" 2>/dev/null || $(OLDEST_PY) -m pip install --progress-bar on "$(TORCH_SPEC)"
	$(PYTHON) .ci/lower_bounds.py > $(OLDEST_VENV)/constraints.txt
	$(OLDEST_PY) -m pip install --progress-bar on -c $(OLDEST_VENV)/constraints.txt -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/phalanx demo

test: $(VENV)/.installed
	$(PY) -m pytest -q tests

test-oldest: $(OLDEST_VENV)/.installed
	$(OLDEST_PY) -m pytest -q tests

clean:
	rm -rf $(VENV) $(OLDEST_VENV) outputs
