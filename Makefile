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
# The notebooks' scale, as blendmask_edu.utils.notebook_scale decides it (BLENDMASK_EDU_SCALE, else
# "ci" when CI is set), and the per-cell limit of their run: 15 minutes at the CI scale; 4 hours at
# the full scale, where a fresh clone without runs/demo trains the notebooks' shared model in a cell.
NB_SCALE := $(if $(BLENDMASK_EDU_SCALE),$(BLENDMASK_EDU_SCALE),$(if $(filter-out 0 false False FALSE,$(CI)),ci,full))
ifeq ($(NB_SCALE),ci)
NBVAL_TIMEOUT ?= 900
else
NBVAL_TIMEOUT ?= 14400
endif
# make gpu-check: the COCO subset, the training iterations and the val images of the quick AP;
# GPU_ARGS passes anything else to benchmarks/gpu_check.py (e.g. GPU_ARGS="--backbone.weights_path FILE").
GPU_DATA  ?= data/coco_subset
GPU_ITERS ?= 300
GPU_VAL   ?= 200
GPU_ARGS  ?=

.PHONY: setup demo compare bench time-to-accuracy gpu-check test test-unit test-notebooks clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

demo: setup
	$(PY) -m blendmask_edu demo --data $(DATA) --out $(RUN)

# BlendMask against its Mask R-CNN counterpart (Panoptic-FPN) on $(DATA): three trainings
# (about an hour on 2 cores), both evaluated, runs/compare/report.md; resumes when interrupted.
compare: setup
	$(PY) -m blendmask_edu compare --data $(DATA) --out runs/compare

bench: setup
	$(PY) benchmarks/speed.py

# The demo's preset against the 4000-step recipe it replaced, trained one after the other on
# $(DATA) (about 35 minutes on 2 cores; run it on a quiet machine): times, mask AP, PQ, the ratio.
time-to-accuracy: setup
	$(PY) benchmarks/time_to_accuracy.py --data $(DATA) --json runs/time_to_accuracy.json

# A few hundred iterations of coco_r50_short on a COCO subset, measured (benchmarks/gpu_check.py);
# without a CUDA GPU it says so and exits 0.
gpu-check: setup
	$(PY) benchmarks/gpu_check.py --data $(GPU_DATA) --iters $(GPU_ITERS) --val-images $(GPU_VAL) $(GPU_ARGS)

test: test-unit test-notebooks

test-unit: setup
	$(PY) -m pytest tests/

# The walk-through notebooks, and the student versions of the assignments as released (each
# must run top to bottom with its stubs: the checks print "not implemented yet").
test-notebooks: setup
	rm -rf build/assignments
	$(PY) -m blendmask_edu assignments release --out build/assignments
	$(PY) -m pytest --nbval-lax --nbval-current-env --nbval-cell-timeout=$(NBVAL_TIMEOUT) -p no:cacheprovider notebooks/ build/assignments/

clean:
	rm -rf $(VENV) runs build *.egg-info
