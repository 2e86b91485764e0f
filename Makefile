# circfft developer tasks (GNU make, POSIX sh recipes).
#
#   make demo   create or reuse .venv, install, run the fine-tuning demo (python -m circfft demo)
#   make test   create or reuse .venv, install, run the tests, build the docs, smoke-test asv
#
# The virtual environment is (re)built only when pyproject.toml or the pinned extras below
# change: the stamp file's name carries a checksum of both.

SHELL := /bin/sh
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch is pinned exactly: a CPU wheel of this release is available locally, and an
# unpinned requirement would pull a multi-GB CUDA build.
TORCH := torch==2.13.0
EXTRAS := test,bench,docs,peft,demo
DEPS_SUM := $(shell { cat pyproject.toml; echo '$(EXTRAS) $(TORCH)'; } | cksum | cut -d' ' -f1)
STAMP := $(VENV)/.stamp-$(DEPS_SUM)

SPHINXOPTS ?= -W --keep-going -q
DOCS_OUT := docs/_build
ASV_CONF := asv_benchmarks/asv.conf.json

.PHONY: help venv test pytest docs doctest asv-check demo bench gpu-check clean

help:
	@echo "make demo       set up .venv and fine-tune MiniLM-L6 with circfft's adapter (python -m circfft demo)"
	@echo "make test       set up .venv, run pytest, build the docs (-W), smoke-test the asv suite"
	@echo "make docs       build the HTML docs into $(DOCS_OUT)/html"
	@echo "make doctest    run the examples in the docs"
	@echo "make bench      full benchmark table (python -m circfft bench)"
	@echo "make asv-check  check the asv suite and run each method once on small data"
	@echo "make gpu-check  on a machine with a GPU: the gpu tests and the GPU benchmarks into GPU_OUT"
	@echo "make clean      remove build outputs (keeps .venv)"

venv: $(STAMP)

$(STAMP):
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[$(EXTRAS)]" "$(TORCH)"
	@rm -f $(VENV)/.stamp-*
	@touch $@

test: pytest docs doctest asv-check

pytest: venv
	$(PY) -m pytest -q

docs: venv
	$(PY) -m sphinx $(SPHINXOPTS) -b html docs $(DOCS_OUT)/html
	@echo "docs: $(DOCS_OUT)/html/index.html"

doctest: venv
	$(PY) -m sphinx $(SPHINXOPTS) -b doctest docs $(DOCS_OUT)/doctest

# Smoke test of the asv suite, so that it cannot rot: `asv check` imports and validates every
# benchmark, then every method (each backend and each peer) runs once, forward and inverse, at
# one size on small data, in this environment, saving nothing.  asv exits non-zero when a
# benchmark fails or when the selection matches nothing.
ASV_SMOKE := \(.*, 64, 'float32'
ASV_SMOKE_ELEMENTS := 65536

asv-check: venv
	@if [ -f $(ASV_CONF) ]; then \
	    set -e; cd asv_benchmarks; \
	    ../$(PY) -m asv machine --yes --machine ci >/dev/null; \
	    ../$(PY) -m asv check --python=same; \
	    CIRCFFT_ASV_ELEMENTS=$(ASV_SMOKE_ELEMENTS) ../$(PY) -m asv run --python=same \
	        --machine ci --quick --dry-run --show-stderr --bench "$(ASV_SMOKE)"; \
	else \
	    echo "asv-check: $(ASV_CONF) not found, skipped"; \
	fi

demo: venv
	$(PY) -m circfft demo

bench: venv
	$(PY) -m circfft bench

# On a machine with a CUDA GPU and torch, cupy, peft and transformers already installed (no
# venv: GPU_PY is that machine's python): the gpu-marked tests and every GPU benchmark, each
# written to $(GPU_OUT) (text and JSON), in one command of well under ten minutes.
GPU_PY ?= python3
GPU_OUT ?= gpu-check
gpu-check:
	mkdir -p $(GPU_OUT)
	-PYTHONPATH=. $(GPU_PY) -m pytest -q -m gpu tests -p no:cacheprovider > $(GPU_OUT)/pytest-gpu.txt 2>&1
	-PYTHONPATH=. $(GPU_PY) -m circfft info > $(GPU_OUT)/info.txt 2>&1
	-PYTHONPATH=. $(GPU_PY) -m circfft bench --device cuda --json $(GPU_OUT)/bench-gpu.json > $(GPU_OUT)/bench-gpu.txt 2>&1
	-PYTHONPATH=. $(GPU_PY) -m circfft bench --ops --device cuda --json $(GPU_OUT)/bench-ops.json > $(GPU_OUT)/bench-ops.txt 2>&1
	-PYTHONPATH=. $(GPU_PY) -m circfft bench --adapters --device cuda --json $(GPU_OUT)/bench-adapters.json > $(GPU_OUT)/bench-adapters.txt 2>&1
	@tail -n 3 $(GPU_OUT)/*.txt

clean:
	rm -rf $(DOCS_OUT) docs/generated build dist *.egg-info .pytest_cache .hypothesis
	rm -rf asv_benchmarks/.asv asv_benchmarks/results asv_benchmarks/html
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +
