# jsemi: every target creates .venv and installs what it needs, so each works first on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-dev
BENCH_STAMP := $(VENV)/.installed-bench
DOCS_STAMP := $(VENV)/.installed-docs
FMNIST := /usr/share/datasets/fashion-mnist
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: all install demo test test-colab test-slow test-all bench bench-gpu fashion-mnist clean docs-api

all: test

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip "setuptools>=70.1" wheel  # a fresh 3.11 venv ships setuptools 65 without bdist_wheel

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e ".[dev,plots]"
	touch $(STAMP)

install: $(STAMP)

# Debian's dataset-fashion-mnist when apt is usable; otherwise jsemi.data falls back to tensorflow-datasets.
fashion-mnist:
	@if [ -f $(FMNIST)/train-images-idx3-ubyte.gz ]; then echo "Fashion-MNIST: $(FMNIST)"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) \
	  || echo "apt-get failed: falling back to tensorflow-datasets"; \
	else echo "apt not usable: Fashion-MNIST will come from tensorflow-datasets"; fi

demo: $(STAMP) fashion-mnist
	$(PY) -m jsemi demo --out runs/demo

# the default suite (CPU time in benchmarks/RESULTS.md, "make test: CPU time"); its 25 slowest tests are listed
test: $(STAMP)
	$(PY) -m pytest -m "not slow" -q -p no:cacheprovider --durations=25

# The Colab-runtime check (the wheel in a fresh venv outside the checkout, a stub google.colab,
# all three notebooks): slow-marked, so outside make test's CPU budget; make test-slow runs it too.
test-colab: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests/test_colab_runtime.py

# The slow suite (what is slow or covered by a cheaper test in make test, each with its reason
# beside its mark); CI runs it (.ci/run). It first installs the peers it compares against (CPU
# PyTorch for the model reference test); PEERS=0 skips that install, and that test skips.
PEERS ?= 1
test-slow: $(STAMP)
	@if [ "$(PEERS)" != 0 ]; then $(MAKE) --no-print-directory $(BENCH_STAMP); fi
	$(PY) -m pytest -m slow -q -p no:cacheprovider --durations=15

test-all: $(BENCH_STAMP)
	$(PY) -m pytest -q

$(BENCH_STAMP): pyproject.toml $(STAMP)
	$(PY) -m pip install --quiet torch==2.13.0 scipy tqdm requests
	$(PY) -m pip install --quiet --no-deps torchattacks==3.5.1
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP) fashion-mnist
	$(PY) benchmarks/bench_attacks.py
	$(PY) benchmarks/bench_edge.py
	$(PY) benchmarks/bench_sharding.py
	@echo "GPU: PYTHONPATH=. python3 benchmarks/bench_gpu_train.py on a GPU machine (see benchmarks/RESULTS.md)"

# On a lent GPU: attacks (jsemi vs torchattacks vs the original AutoAttack checkout), Algorithm 1, EDGE.
# `make bench-gpu BENCH_GPU_FLAGS=--smoke` checks it on a CPU in minutes.
AUTOATTACK_PATH ?= /work/ext/auto-attack
bench-gpu: $(BENCH_STAMP)
	$(PY) benchmarks/bench_gpu.py --autoattack-path $(AUTOATTACK_PATH) --out benchmarks/_out/gpu.json $(BENCH_GPU_FLAGS)

$(DOCS_STAMP): pyproject.toml $(STAMP)
	$(PY) -m pip install --quiet -e ".[docs]"
	touch $(DOCS_STAMP)

# API reference from the docstrings (pdoc) into docs/api/ (build output, not committed); any warning fails it.
docs-api: $(DOCS_STAMP)
	rm -rf docs/api
	JAX_PLATFORMS=cpu $(PY) -m pdoc jsemi -o docs/api > $(VENV)/pdoc.log 2>&1 || { cat $(VENV)/pdoc.log; exit 1; }
	@cat $(VENV)/pdoc.log
	@if grep -qi warn $(VENV)/pdoc.log; then echo "docs-api: pdoc warned (above): fix those docstrings" >&2; exit 1; fi
	@echo "API reference: docs/api/index.html"

# Fidelity of jsemi's attacks against the original AutoAttack, run beside it on the same weights
# and points (benchmarks/bench_fidelity.py). The original is never vendored: AUTOATTACK_PATH is the
# folder of a checkout of github.com/fra31/auto-attack (the one holding autoattack/autoattack.py), e.g.
#   git clone https://github.com/fra31/auto-attack /tmp/auto-attack
#   make bench-fidelity AUTOATTACK_PATH=/tmp/auto-attack FIDELITY_FLAGS="--only apgd-ce,square --seeds 0,1"
.PHONY: bench-fidelity
bench-fidelity: $(BENCH_STAMP) fashion-mnist
	@test -f "$(AUTOATTACK_PATH)/autoattack/autoattack.py" || { echo "bench-fidelity: set AUTOATTACK_PATH to a checkout of github.com/fra31/auto-attack (got '$(AUTOATTACK_PATH)')" >&2; exit 2; }
	$(PY) benchmarks/bench_fidelity.py --autoattack-path $(AUTOATTACK_PATH) $(FIDELITY_FLAGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
