# easytune_lab — two commands set up everything on a fresh machine with Python 3.11:
#   make reproduce   # venv + install + main job (procedural data, checks, playbacks, every claim)
#   make test        # venv + install + the test suite (what CI runs)
#   make lab         # venv + install + JupyterLab on notebooks/ with the project's kernel
# GPU users: make reproduce PROFILE=paper DEVICE=cuda TORCH_INDEX=https://download.pytorch.org/whl/cu126

PYTHON      ?= python3.11
VENV        ?= .venv
PROFILE     ?= quick
DEVICE      ?= auto
SEED        ?= 0
# processes building runs and running notebooks at once (0: auto, 1 on a GPU, min(cores, 4) on a CPU)
JOBS        ?= 0
RESULTS     ?= results
TORCH_VERSION ?= 2.13.0
# CPU wheels by default, so that no CUDA build of torch is ever pulled on a CPU machine.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
# extra `jupyter lab` options, e.g. LAB_ARGS="--no-browser --ip=0.0.0.0 --port=8888"
LAB_ARGS    ?=
# JupyterLab refuses to start as root unless told to (containers, cloud shells)
ALLOW_ROOT  := $(shell [ "$$(id -u)" = 0 ] && echo --allow-root)

PY  := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: venv test reproduce lab clean lint

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install --retries 0 "torch==$(TORCH_VERSION)" --index-url $(TORCH_INDEX)
	$(PIP) install -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

test: venv
	$(PY) -m pytest -q --nbval-lax tests notebooks

reproduce: venv
	$(PY) -m easytune_lab.cli reproduce --profile $(PROFILE) --device $(DEVICE) --seed $(SEED) --jobs $(JOBS) --results $(RESULTS)

# The venv's own `python3` kernel is the project's kernel: the notebooks name it, and it imports easytune_lab.
lab: venv
	$(VENV)/bin/jupyter lab $(ALLOW_ROOT) $(LAB_ARGS) --ServerApp.root_dir=$(CURDIR) notebooks/00_quickstart.ipynb

clean:
	rm -rf $(VENV) .cache runs
