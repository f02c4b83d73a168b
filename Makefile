# Two commands for a fresh machine (Python 3.10+):
#   make demo   set up, then train the demo preset on the embedded images and write figures to runs/demo/
#   make test   set up, then run pytest on tests/ and nbval on every notebook
#
# Set-up: inside an active virtual environment or conda environment we install into it; otherwise
# we create .venv/ here. torch/torchvision come from PyPI as the matching pair pinned in requirements.txt.

ifneq ($(strip $(VIRTUAL_ENV)$(CONDA_PREFIX)),)
  PY := python
  STAMP := .setup-stamp-active
else
  VENV := .venv
  PY := $(VENV)/bin/python
  STAMP := $(VENV)/.setup-stamp
endif

# nbval: lax mode, one worker per notebook (loadscope groups a notebook's cells on one worker).
# OMP_NUM_THREADS=1: two workers on two cores; more threads each only fight over the cores.
WORKERS ?= 2
NOTEBOOKS := $(wildcard notebooks/*.ipynb)

.PHONY: setup demo test test-py test-nb lab bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.txt requirements-dev.txt
ifdef VENV
	test -x $(PY) || python3 -m venv $(VENV)
endif
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[dev]"
	touch $(STAMP)

demo: setup
	$(PY) -m csa_lib.cli demo

test: setup
	CSA_SMOKE=1 MPLBACKEND=Agg OMP_NUM_THREADS=1 $(PY) -m pytest -n $(WORKERS) --dist loadscope tests/ \
	  --nbval-lax $(NOTEBOOKS) -p no:cacheprovider

test-py: setup
	MPLBACKEND=Agg $(PY) -m pytest -n $(WORKERS) tests/

test-nb: setup
	CSA_SMOKE=1 MPLBACKEND=Agg OMP_NUM_THREADS=1 $(PY) -m pytest -n $(WORKERS) --dist loadscope --nbval-lax $(NOTEBOOKS)

lab: setup
	$(PY) -m pip install jupyterlab
	$(PY) -m jupyter lab notebooks/

bench: setup
	$(PY) benchmarks/bench_csa.py

clean:
	rm -rf runs/ .pytest_cache build dist *.egg-info
