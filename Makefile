# `make demo` and `make test` do all the set-up on a fresh machine: a virtualenv in .venv, the CPU
# build of torch installed *first* (an unpinned torch would pull several GB of CUDA packages), then
# jestkit and its dependencies, then the Fashion-MNIST Debian package where apt is available.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.jestkit-installed
FASHION_DIR := /usr/share/datasets/fashion-mnist
OUT ?= runs/demo

.PHONY: install data demo test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,tensorboard]'
	touch $(STAMP)

# Real images that ship offline. Installs the Debian package when it is missing and we can.
data:
	@if [ -d $(FASHION_DIR) ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
		|| echo "warning: could not install dataset-fashion-mnist; Fashion-MNIST runs will fail with a message"; \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then \
		(sudo apt-get update -qq && sudo apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
		|| echo "warning: could not install dataset-fashion-mnist"; \
	else \
		echo "warning: $(FASHION_DIR) missing and apt-get unavailable: run 'apt-get install dataset-fashion-mnist' as root"; \
	fi

demo: install data
	$(VENV)/bin/jestkit reproduce --out $(OUT)

test: install data
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

bench: install data
	$(PY) bench/selection.py --threads 1
	$(PY) bench/models.py
	$(PY) bench/data.py
	$(PY) bench/overhead.py --threads 1
	$(PY) bench/distributed.py

clean:
	rm -rf $(VENV) runs .pytest_cache
