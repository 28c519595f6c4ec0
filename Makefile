# The course kit's commands. The README explains them; `make help` lists them.
PYTHON  ?= python3
PROFILE ?= auto
# ONLY=06 (or "04 06"): just those notebooks
ONLY    ?=
VENV    := .venv
PY      := $(VENV)/bin/python
# Offline by default: the default model and data are local. `HF_HUB_OFFLINE=0 make course` allows the Hub.
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= $(HF_HUB_OFFLINE)
# papermill's "python3" kernel must be this virtual environment's, not one registered elsewhere.
export JUPYTER_PATH := $(CURDIR)/$(VENV)/share/jupyter
export MPLBACKEND ?= Agg
export TOKENIZERS_PARALLELISM ?= false

# The version-floor environment: requirements-floor.txt, with this torch (PyPI has only CUDA builds of older ones;
# on a GPU machine, `make floor FLOOR_TORCH=torch==2.3.1` tests torch's floor too).
FLOOR_VENV  := .venv-floor
FLOOR_TORCH ?= torch==2.13.0

.PHONY: help setup test floor course bench lab clean gpu gpu-rehearsal

help:
	@echo "make setup   create .venv: torch (when none is importable), requirements and the kit, editable"
	@echo "make test    set up .venv, then run the unit tests and the whole course (profile=smoke)"
	@echo "make floor   the same tests in .venv-floor, with the oldest supported versions (requirements-floor.txt)"
	@echo "make course  set up .venv, then run every notebook (PROFILE=$(PROFILE); ONLY=06 for some) into build/"
	@echo "make bench   benchmarks: fit vs a hand-written loop vs the Trainer; contention beside equal jobs (long)"
	@echo "make gpu     pack .carry/ and print the two commands for the GPU machine (docs/gpu_runs.md)"
	@echo "make gpu-rehearsal  both windows on this CPU: smoke sizes, bf16 forced, then published to build/"
	@echo "make lab     JupyterLab in notebooks/"
	@echo "make clean   remove build/, caches, .venv and .venv-floor"

setup: $(VENV)/.setup-done

$(VENV)/.setup-done: requirements.txt requirements-test.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, and only when none is importable: pip then takes this machine's CPU wheel (no CUDA download).
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -r requirements.txt -r requirements-test.txt
	$(PY) -m pip install --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (layerfreeze)" >/dev/null
	# the kernel starts under the kit's thread policy (docs/instructor_guide.md, "Many learners on one machine")
	$(PY) -m layerfreeze.course.kernelspec $(VENV)/share/jupyter/kernels/python3 >/dev/null
	touch $@

test: setup
	$(PY) -m pytest

$(FLOOR_VENV)/.setup-done: requirements-floor.txt requirements-test.txt pyproject.toml
	test -x $(FLOOR_VENV)/bin/python || $(PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_VENV)/bin/python -m pip install "$(FLOOR_TORCH)"
	$(FLOOR_VENV)/bin/python -m pip install -r requirements-floor.txt -r requirements-test.txt
	$(FLOOR_VENV)/bin/python -m pip install --no-deps -e .
	$(FLOOR_VENV)/bin/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (layerfreeze floor)" >/dev/null
	touch $@

floor: JUPYTER_PATH := $(CURDIR)/$(FLOOR_VENV)/share/jupyter
floor: $(FLOOR_VENV)/.setup-done
	$(FLOOR_VENV)/bin/python -m pip list --format=freeze | grep -iE "^(torch|transformers|datasets|accelerate|ipywidgets|peft|numpy)=="
	$(FLOOR_VENV)/bin/python -m pytest -p no:cacheprovider

course: setup
	$(PY) -m layerfreeze course --profile $(PROFILE) --build-dir build $(if $(strip $(ONLY)),--only $(ONLY))

bench: setup
	$(PY) benchmarks/run.py
	$(PY) benchmarks/contention.py
	$(PY) benchmarks/contention.py --level notebook

# The GPU run: two commands on the device machine (docs/gpu_runs.md), window 1 the notebooks, window 2 the
# benchmarks alone. `make gpu` packs what they carry and prints them.
GPU_COMMAND := source .carry/gpu-env.sh && python3 -m layerfreeze gpu-run --out $$OUT
GPU_BENCH_COMMAND := $(GPU_COMMAND) --part bench --budget <budget_left_s minus 60>

gpu: setup
	bash .ci/gpu/pack.sh $(PY)
	@echo 'Window 1 on the device machine (carry: [".carry"], timeout_s: 590):'
	@echo '  $(GPU_COMMAND)'
	@echo 'Window 2, at once, on the same warm machine (timeout_s: that budget plus 30; status gives budget_left_s):'
	@echo '  $(GPU_BENCH_COMMAND)'
	@echo "Then here: $(PY) -m layerfreeze gpu-import <window 1's folder> <window 2's folder>"

# The same command and packaging on this CPU, with the smoke sizes and the GPU's bf16 path forced (fp16 with its
# scaler is tried by tests/test_gpu_run.py on fit alone: the CPU emulates fp16 products, too slowly for notebooks).
gpu-rehearsal: setup
	bash .ci/gpu/pack.sh $(PY)
	rm -rf build/rehearsal
	$(PY) -m layerfreeze gpu-run --out build/rehearsal/window1 --build-dir build/rehearsal/build1 --profile smoke \
		--precision bf16 --budget 3600
	$(PY) -m layerfreeze gpu-run --out build/rehearsal/window2 --build-dir build/rehearsal/build2 --profile smoke \
		--part bench --budget 1200
	$(PY) -m layerfreeze gpu-import build/rehearsal/window1 build/rehearsal/window2 \
		--build-dir build/rehearsal/imported --docs-dir build/rehearsal/docs --bench-dir build/rehearsal/bench

lab: setup
	cd notebooks && ../$(VENV)/bin/jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root)

clean:
	rm -rf build .pytest_cache .hypothesis $(VENV) $(FLOOR_VENV)
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
