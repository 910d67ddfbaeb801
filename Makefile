# `make demo` and `make test` do all set-up on a fresh machine: a virtual environment in .venv,
# the CPU build of torch when the machine has no NVIDIA GPU (GPU users bring their own torch,
# or set TORCH_SPEC), then lntune itself with the tested versions from constraints.txt.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.lntune-installed
DEMO_OUT ?= demo-out
# pytest-xdist workers for `make test`: one per core (about 1.3 of 2 cores stay busy in one process).
TEST_WORKERS ?= auto

.PHONY: install demo test clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@if $(BIN)/python -c "import torch" 2>/dev/null; then \
		echo "torch already installed: $$($(BIN)/python -c 'import torch; print(torch.__version__)')"; \
	elif command -v nvidia-smi >/dev/null 2>&1; then \
		echo "NVIDIA GPU found: installing $(TORCH_SPEC) (set TORCH_SPEC to choose a CUDA build)"; \
		$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"; \
	else \
		echo "no GPU: installing the CPU build ($(TORCH_SPEC))"; \
		$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"; \
	fi
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/lntune demo --out $(DEMO_OUT)

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal

clean:
	rm -rf $(VENV) $(DEMO_OUT)
