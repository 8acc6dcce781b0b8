# Two commands: `make demo` and `make test`. Both create .venv and install everything first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch is pinned here (the CPU build on this project's machines); pyproject keeps a range.
TORCH ?= torch==2.13.0

.PHONY: demo test install bench bench-quick clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)" -e ".[train,dev,nnunet]"
	# elasticdeform's PyPI wheel was built against NumPy 1 and fails under NumPy 2: build it from source.
	$(BIN)/python -m pip install -q --no-binary elasticdeform elasticdeform
	$(BIN)/python -c "import elasticdeform, torch, onnxruntime, SimpleITK; print('installed: torch', torch.__version__)"
	# headless Chromium for the report's browser test (skipped without it); only as root with apt-get
	command -v chromium >/dev/null || (command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq chromium) || true
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/labelaudit demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

# the noise-rate sweep with its baselines (bench/sweep.py): 67 min on the demo and 40 min on the
# synthetic second dataset, on 2 CPU cores; bench-quick is a few minutes. Both write bench/RESULTS.md.
bench: $(STAMP)
	$(BIN)/python bench/sweep.py
	$(BIN)/python bench/sweep.py --dataset synth

bench-quick: $(STAMP)
	$(BIN)/python bench/sweep.py --quick

clean:
	rm -rf $(VENV) runs audits demo
