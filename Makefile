# Two commands from nothing: `make demo` (the main job) and `make test` (the whole test suite).
# Both create .venv and install what they need. CPU torch is installed first, pinned, so a fresh
# machine never pulls the multi-GB CUDA wheels; on a GPU machine install torch your own way first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0

.PHONY: venv demo test export docs docs-check outputs

$(BIN)/.installed: setup.py settings.ini
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH)"
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
	$(BIN)/python -m pytest -q tests
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
