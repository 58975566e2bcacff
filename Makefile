# The two commands of the README: `make demo` (the main job) and `make test` (all tests).
# Each does its own setup on a fresh machine: a virtual environment in .venv, torch, the package.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
ARCH   := $(shell uname -m)
# The torch build this project is tested with (x86_64; a CUDA build that also runs on a CPU).
# Override on another machine, e.g. `make demo TORCH="torch==2.9.1 torchvision==0.24.1"`.
ifeq ($(ARCH),aarch64)
TORCH  ?= torch==2.9.1 torchvision==0.24.1
else
TORCH  ?= torch==2.14.1 torchvision==0.29.1
endif
DATA   ?= data/shapes
RUN    ?= runs/demo
NBVAL_TIMEOUT ?= 900

.PHONY: setup demo bench test test-unit test-notebooks clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

demo: setup
	$(PY) -m blendmask_edu demo --data $(DATA) --out $(RUN)

bench: setup
	$(PY) benchmarks/speed.py

test: test-unit test-notebooks

test-unit: setup
	$(PY) -m pytest tests/

test-notebooks: setup
	$(PY) -m pytest --nbval-lax --nbval-current-env --nbval-cell-timeout=$(NBVAL_TIMEOUT) -p no:cacheprovider notebooks/

clean:
	rm -rf $(VENV) runs build *.egg-info
