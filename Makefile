# Two commands for everyone: `make book` builds the HTML book, `make test` runs every test.
# Each sets up .venv first (pip install -e ".[book,test]"), and again when pyproject.toml changes.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
NOTEBOOKS := $(sort $(wildcard book/[0-9]*.ipynb))

.PHONY: all venv book test gpu-check wheels clean

all: test

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e ".[book,test]"
	touch $(STAMP)

venv: $(STAMP)

# Executes every chapter in full mode; any execution error or Sphinx warning fails the build.
book: $(STAMP)
	$(VENV)/bin/jupyter-book build . --warningiserror --keep-going

# Unit tests, every notebook through nbval in quick mode, and the book's structure (tests/test_book.py).
test: $(STAMP)
	XNN_LAB_QUICK=1 MPLBACKEND=Agg $(PY) -m pytest tests book solutions --nbval-lax --nbval-current-env

# Every chapter in full mode on a GPU, timed, then the zoo checked. On a machine without the
# network, run `make wheels` where there is one, carry .wheels/, and use GPU_PY=python3.
GPU_PY ?= $(PY)
gpu-check:
	@if [ "$(GPU_PY)" = "$(PY)" ]; then $(MAKE) --no-print-directory venv; \
	else $(GPU_PY) -m pip install --quiet --no-index --find-links .wheels -e . --no-build-isolation; fi
	$(GPU_PY) -m xnn_lab.cli chapters --require-cuda $(NOTEBOOKS)
	$(GPU_PY) -m xnn_lab.cli zoo check
	$(GPU_PY) -m xnn_lab.cli bench cam --model resnet50 --batch-size 64 --image-size 224

# Wheels of the package's dependencies except torch/torchvision (which a GPU machine has).
wheels: $(STAMP)
	$(PY) -m pip download --quiet -d .wheels scipy scikit-learn tqdm safetensors captum setuptools wheel

clean:
	rm -rf _build .pytest_cache .wheels
