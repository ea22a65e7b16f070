# easytune_lab — two commands set up everything on a fresh machine with Python 3.11:
#   make reproduce   # venv + install + main job (procedural data, checks, playbacks, every claim)
#   make test        # venv + install + the test suite (what CI runs)
# GPU users: make reproduce PROFILE=paper DEVICE=cuda TORCH_INDEX=https://download.pytorch.org/whl/cu126

PYTHON      ?= python3.11
VENV        ?= .venv
PROFILE     ?= quick
DEVICE      ?= auto
SEED        ?= 0
RESULTS     ?= results
TORCH_VERSION ?= 2.13.0
# CPU wheels by default, so that no CUDA build of torch is ever pulled on a CPU machine.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu

PY  := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: venv test reproduce clean lint

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install --retries 0 "torch==$(TORCH_VERSION)" --index-url $(TORCH_INDEX)
	$(PIP) install -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

test: venv
	$(PY) -m pytest -q --nbval-lax tests notebooks

reproduce: venv
	$(PY) -m easytune_lab.cli reproduce --profile $(PROFILE) --device $(DEVICE) --seed $(SEED) --results $(RESULTS)

clean:
	rm -rf $(VENV) .cache runs
