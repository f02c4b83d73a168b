# Two commands for a fresh machine (Python 3.10+):
#   make demo   set up, then train the demo preset on the embedded images and write figures to runs/demo/
#   make test   set up, then run pytest on tests/ and nbval on every notebook
# Also: make clean-notebooks   strip the outputs JupyterLab saved into notebooks/ (they are committed clean)
# Also: make lab [LAB_ARGS="--port 8890 --no-browser --ip 127.0.0.1"]   JupyterLab on notebooks/
#       make test-browser   the JupyterLab widget tests in headless Chromium (tests/test_browser.py)
#
# Set-up: inside an active virtual environment or conda environment we install into it; otherwise
# we create .venv/ here. The library's requirements are ranges (requirements.txt); set-up installs the
# exact, tested versions from constraints.txt (torch 2.15.0 + torchvision 0.29.2 and the rest).

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

# JupyterLab options, e.g. LAB_ARGS="--port 8890 --no-browser --ip 0.0.0.0". As root, --allow-root is added.
LAB_ARGS ?=
LAB_ROOT := $(if $(filter 0,$(shell id -u 2>/dev/null)),--allow-root,)

.PHONY: setup demo test test-py test-nb test-browser lab book bench colab clean clean-notebooks

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.txt requirements-dev.txt constraints.txt
ifdef VENV
	test -x $(PY) || python3 -m venv $(VENV)
endif
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: setup
	$(PY) -m csa_lib.cli demo

test: setup
	CSA_SMOKE=1 MPLBACKEND=Agg OMP_NUM_THREADS=1 $(PY) -m pytest -n $(WORKERS) --dist loadscope tests/ \
	  -m "not browser" --nbval-lax $(NOTEBOOKS) -p no:cacheprovider

test-py: setup
	MPLBACKEND=Agg $(PY) -m pytest -n $(WORKERS) -m "not browser" tests/

test-nb: setup
	CSA_SMOKE=1 MPLBACKEND=Agg OMP_NUM_THREADS=1 $(PY) -m pytest -n $(WORKERS) --dist loadscope --nbval-lax $(NOTEBOOKS)

# Playwright drives the system's Chromium (no browser download): Debian's `chromium` package, installed
# here with apt when we are root; otherwise the tests skip with a message saying what is missing.
test-browser: setup
	$(PY) -m pip install -q -c constraints.txt -e ".[browser]" || \
	  echo "test-browser: could not install playwright (pip); the browser tests will skip"
	@if ! command -v chromium >/dev/null 2>&1 && [ -z "$$CSA_CHROMIUM" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	      chromium) || echo "test-browser: apt-get install chromium failed; the browser tests will skip"; \
	  else \
	    echo "test-browser: no chromium found; install it (Debian/Ubuntu: sudo apt-get install chromium)" \
	         "or set CSA_CHROMIUM=/path/to/chrome; the browser tests will skip"; \
	  fi; \
	fi
	CSA_SMOKE=1 MPLBACKEND=Agg OMP_NUM_THREADS=1 $(PY) -m pytest -v -rs tests/test_browser.py -p no:cacheprovider

lab: setup
	$(PY) -m jupyter lab $(LAB_ROOT) $(LAB_ARGS) notebooks/

# Notebooks are committed without outputs (tests/test_notebooks_clean.py checks it), but JupyterLab's
# autosave stores them: this clears outputs, execution counts and run-time cell metadata in place, and
# changes nothing else (a clean notebook stays byte for byte the same).
CLEAR_FIELDS := collapsed scrolled execution ExecuteTime
clean-notebooks: setup
	$(PY) -m jupyter nbconvert --clear-output --inplace --log-level WARN \
	  $(foreach f,$(CLEAR_FIELDS),--ClearOutputPreprocessor.remove_metadata_fields=$(f)) $(NOTEBOOKS)

# The notebooks as HTML pages with their outputs and figures (executed in the smoke profile, one after
# another): open build/book/index.html. CSA_PROFILE=laptop make book for the larger runs (minutes).
book: setup
	$(if $(CSA_PROFILE),,CSA_SMOKE=1) $(PY) docs/build_book.py --out build/book

# "Open in Colab" badges for the repository's public address: make colab REPO=OWNER/NAME [BRANCH=main]
# (docs/colab.py; python docs/colab.py --remove takes them out again).
BRANCH ?= main
colab:
	@test -n "$(REPO)" || { echo "make colab: give the public GitHub repository, e.g. make colab REPO=OWNER/NAME"; exit 2; }
	python3 docs/colab.py "$(REPO)" --branch "$(BRANCH)"

bench: setup
	$(PY) benchmarks/bench_csa.py

# The GPU readiness check (benchmarks/gpu_check.py, parts a-e, report in runs/gpu_check/gpu_check.json):
# about 8 minutes on CUDA; GPU_CHECK_ARGS=--smoke runs the same code on the CPU with tiny sizes. Parts d
# and e read .gpu_data/ (python benchmarks/gpu_check.py --prepare-data copies it from ../shared).
.PHONY: gpu-check
gpu-check: setup
	$(PY) benchmarks/gpu_check.py --out runs/gpu_check $(GPU_CHECK_ARGS)

clean:
	rm -rf runs/ .pytest_cache build dist *.egg-info
