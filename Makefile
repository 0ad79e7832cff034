# Two commands from nothing: `make demo` (the main job) and `make test` (the whole test suite).
# Both create .venv and install what they need, torch first, pinned, in the build that fits the machine:
#   - no NVIDIA GPU (no working `nvidia-smi`): the CPU build from PyTorch's CPU wheel index (no multi-GB CUDA wheels);
#   - an NVIDIA GPU: the default (CUDA) build from PyPI.
# Choose yourself with `make venv TORCH_BUILD=cpu|cuda`, another index with `TORCH_INDEX=URL`, another pin with
# `TORCH=torch==X.Y.Z` (or install torch into .venv your own way first: an importable torch is kept).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
TORCH_BUILD ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo cuda || echo cpu)
TORCH_INDEX ?= $(if $(filter cpu,$(TORCH_BUILD)),https://download.pytorch.org/whl/cpu,)
TORCH ?= torch==$(TORCH_VERSION)$(if $(filter cpu,$(TORCH_BUILD)),+cpu,)
# torch alone comes from TORCH_INDEX (no dependencies: pip's configured indexes keep serving those), asked with a short
# timeout and no retries, so an offline or firewalled machine falls back to the plain pin at once instead of hanging.
PIP_TORCH_OPTS ?= --timeout 10 --retries 0

.PHONY: venv demo test export docs docs-check outputs

$(BIN)/.installed: setup.py settings.ini
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@if $(BIN)/python -c "import torch" 2>/dev/null; then echo "torch: keeping the installed $$($(BIN)/python -c 'import torch; print(torch.__version__)')"; \
	else echo "torch: installing $(TORCH) ($(TORCH_BUILD) build$(if $(TORCH_INDEX), from $(TORCH_INDEX)))"; \
	  { $(if $(TORCH_INDEX),$(BIN)/pip install -q --no-deps $(PIP_TORCH_OPTS) --extra-index-url $(TORCH_INDEX) "$(TORCH)" &&) \
	    $(BIN)/pip install -q "$(TORCH)"; } \
	  || { echo "torch: $(TORCH) not reachable; installing the plain pin torch==$(TORCH_VERSION)"; \
	       $(BIN)/pip install -q "torch==$(TORCH_VERSION)"; }; fi
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

venv: $(BIN)/.installed

demo: venv
	$(BIN)/python -m dis_nbdev.demo

# Notebooks whose saved outputs CI re-executes and compares (tools/execute_notebooks.py --check); the rest are linted.
CURRENT_NBS ?= nbs/index.ipynb nbs/13_viewer.ipynb

test: venv
	bash .ci/check_export.sh
	$(BIN)/ruff check .
	$(BIN)/nbdev_test --n_workers 2
	$(BIN)/python -m pytest -q -rs -n 2 tests
	$(BIN)/python tools/execute_notebooks.py --check --workers 2 $(CURRENT_NBS)
	$(MAKE) docs-check
	$(BIN)/python tools/execute_notebooks.py --lint

# Re-execute every notebook in place so its example cells keep current outputs (slow/gpu cells keep theirs).
outputs: venv
	$(BIN)/python tools/execute_notebooks.py --workers 2

# The documentation site in _site/ (notebooks with their saved outputs, API reference, README as index).
docs: venv
	$(BIN)/python tools/build_docs.py

# Load every page of the built site in headless Chromium (apt-get install chromium); screenshots in _site_shots/.
docs-check: docs
	$(BIN)/python tools/check_site.py

export: venv
	$(BIN)/nbdev_export && $(BIN)/nbdev_clean
