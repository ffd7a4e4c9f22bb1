# Two commands for everyone: `make book` builds the HTML book, `make test` runs every test.
# Each sets up .venv first (pip install -e ".[book,test]"), and again when pyproject.toml changes.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
NOTEBOOKS := $(sort $(wildcard book/[0-9]*.ipynb))

.PHONY: all venv book book-check test gpu-check bench wheels clean

all: test

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e ".[book,test]"
	touch $(STAMP)

venv: $(STAMP)

# Executes every chapter in full mode; any execution error or Sphinx warning fails the build.
# MPLBACKEND must not reach the kernels: it would replace their inline backend (no figures).
book: $(STAMP)
	env -u MPLBACKEND $(VENV)/bin/jupyter-book build . --warningiserror --keep-going

# The full book, as `make book` built it, opened in headless Chromium (tests/test_browser.py).
book-check: book
	XNN_LAB_BOOK_HTML=_build/html $(PY) -m pytest tests/test_browser.py -q

# Unit tests; the book built once with every chapter executed in quick mode and opened in
# headless Chromium (tests/test_browser.py); the solution notebooks through nbval.
test: $(STAMP)
	XNN_LAB_QUICK=1 MPLBACKEND=Agg $(PY) -m pytest tests solutions --nbval-lax --nbval-current-env

# The CUDA tests; the benchmarks, saved as records in $(RECORDS) for the Performance page; the zoo
# checked; every chapter in full mode on a GPU, timed, CHAPTER_JOBS at a time (each in its own process).
# On a machine without the network that has PyTorch, carry the wheels of `make wheels` (captum, pure
# Python), install them, and use GPU_PY=python3.
GPU_PY ?= $(PY)
RECORDS ?= benchmarks
BENCH = $(GPU_PY) -m xnn_lab.cli bench
CUDA_TESTS = $(shell grep -l "def test_.*cuda" tests/test_*.py)
CHAPTER_JOBS ?= 8
gpu-check:
	@if [ "$(GPU_PY)" = "$(PY)" ]; then $(MAKE) --no-print-directory venv; fi
	$(GPU_PY) -m pytest -q -rs -k cuda $(CUDA_TESTS)
	$(BENCH) cam --model resnet50 --batch-size 64 --image-size 224 --json $(RECORDS)/cam-gpu.json
	$(BENCH) influence --json $(RECORDS)/influence-gpu.json
	$(BENCH) protopnet --json $(RECORDS)/protopnet-gpu.json
	$(GPU_PY) -m xnn_lab.cli zoo check
	$(GPU_PY) tools/chapters.py --require-cuda --jobs $(CHAPTER_JOBS) $(NOTEBOOKS) --json $(RECORDS)/chapters-gpu.json

# The same benchmarks on this machine's CPU, every chapter timed in quick and in full mode (about
# 15 minutes on 2 cores), then the Performance page from every record.
bench: $(STAMP)
	$(PY) -m xnn_lab.cli bench cam --device cpu --json $(RECORDS)/cam-cpu.json
	$(PY) -m xnn_lab.cli bench influence --device cpu --json $(RECORDS)/influence-cpu.json
	$(PY) -m xnn_lab.cli bench protopnet --device cpu --json $(RECORDS)/protopnet-cpu.json
	$(PY) -m xnn_lab.cli bench graphs --json $(RECORDS)/graphs-cpu.json
	CUDA_VISIBLE_DEVICES= $(PY) tools/chapters.py --quick $(NOTEBOOKS) --json $(RECORDS)/chapters-cpu-quick.json
	CUDA_VISIBLE_DEVICES= $(PY) tools/chapters.py $(NOTEBOOKS) --json $(RECORDS)/chapters-cpu.json
	$(PY) tools/performance.py $(RECORDS) --output book/performance.md

# Wheels of what a GPU machine with PyTorch lacks (captum), for `make gpu-check` there.
wheels: $(STAMP)
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: -d .wheels captum

clean:
	rm -rf _build .pytest_cache .wheels
