# The two set-up commands:
#   make demo   create a venv, install, run the example batch on this machine, print the ledger summary
#   make test   install the dev dependencies, start the services the tests need, run the whole test suite

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HPCQUEUE := $(VENV)/bin/hpcqueue
TORCH_VERSION ?= 2.13.0
# Without an NVIDIA driver, take torch from its CPU-only wheel index so pip never downloads CUDA builds.
# Override with TORCH_INDEX= (empty) to use only the default index.
TORCH_INDEX ?= $(if $(shell command -v nvidia-smi 2>/dev/null),,https://download.pytorch.org/whl/cpu)

.PHONY: demo test install dev lint bench clean torch

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# torch first and alone: installing the project would otherwise resolve whatever torch build the index offers
	$(PY) -c "import torch" 2>/dev/null || $(MAKE) --no-print-directory torch
	$(PY) -m pip install -q -e .
	touch $@

# The CPU index is used only when it answers; otherwise the default index (and any local wheel) decides.
torch:
	@if [ -n "$(TORCH_INDEX)" ] && $(PY) -c "import urllib.request as u; u.urlopen('$(TORCH_INDEX)/', timeout=5)" \
	    2>/dev/null; then \
	  echo "installing torch==$(TORCH_VERSION) (CPU build from $(TORCH_INDEX))"; \
	  $(PY) -m pip install -q "torch==$(TORCH_VERSION)" --extra-index-url "$(TORCH_INDEX)"; \
	else \
	  echo "installing torch==$(TORCH_VERSION) from the default index"; \
	  $(PY) -m pip install -q "torch==$(TORCH_VERSION)"; \
	fi

$(VENV)/.dev-installed: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

dev: $(VENV)/.dev-installed

demo: $(VENV)/.installed
	HF_HUB_OFFLINE=1 $(HPCQUEUE) submit examples/prompts.jsonl --wait
	$(HPCQUEUE) ledger summary --by target

test: $(VENV)/.dev-installed
	tests/services/run.sh $(PY) -m pytest

lint: $(VENV)/.dev-installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy hpcqueue

bench: $(VENV)/.dev-installed
	$(PY) bench/ingest_plan.py
	$(PY) bench/worker_batching.py
	$(PY) bench/ledger_insert.py
	$(PY) bench/meter_overhead.py
	$(PY) bench/cost_models.py
	$(PY) bench/simulate.py
	$(PY) bench/optimal_gap.py
	$(PY) bench/paper_section6.py --out $(CURDIR)/bench/out

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
