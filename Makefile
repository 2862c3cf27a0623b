# The two commands of the README: `make test` and `make demo`. Both set up .venv.
PYTHON ?= python3
# Where pip finds the CPU build of torch: its configured index by default (a machine whose
# index serves CUDA builds: TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu").
TORCH_PIP_ARGS ?=
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DOCS_STAMP := $(VENV)/.installed-docs

.PHONY: test demo lint docs clean browser

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU wheel first, so that the package's torch range is already met.
	$(PY) -m pip install -q torch==2.13.0 $(TORCH_PIP_ARGS)
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

# Debian's Chromium for the report's browser test, where we may install it
# (the test says it is skipped otherwise).
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
	  >/dev/null; } || echo "Chromium unavailable: the browser test will be skipped."

test: $(STAMP) browser
	# One BLAS and torch thread per worker: two workers on two cores.
	OMP_NUM_THREADS=1 $(PY) -m pytest -n 2 --durations=15

# A 3-fold audit of a small MLP on scikit-learn's digits with 5 % of the labels flipped
# on purpose (the report finds them), about 20 seconds on 2 cores, venv aside.
demo: $(STAMP)
	MPLBACKEND=Agg $(PY) -m sksim audit --dataset digits --model mlp --cv 3 --label-noise 0.05 --out report.html
	@echo "Open $(CURDIR)/report.html in a browser to read the audit."

$(DOCS_STAMP): $(STAMP)
	$(PY) -m pip install -q -e ".[docs]"
	touch $(DOCS_STAMP)

# The documentation, examples gallery included, offline, warnings as errors.
docs: $(DOCS_STAMP)
	rm -rf docs/_build docs/generated docs/auto_examples
	OMP_NUM_THREADS=1 MPLBACKEND=Agg $(PY) -m sphinx -W --keep-going -b html docs docs/_build/html
	@echo "Documentation: docs/_build/html/index.html"

# Style (ruff's rules of pyproject.toml), formatting, and the package's docstrings
# (pydocstyle's numpy convention; summaries may be noun phrases, hence no D401;
# dunder methods are documented by Python, hence no D105; most public methods
# without a docstring override one of skorch, torch or the audit's Analysis,
# hence no D102). The docs build adds numpydoc's own validation of every
# documented object, methods included (docs/conf.py).
lint: $(STAMP)
	$(PY) -m ruff check sksim tests examples benchmarks
	$(PY) -m ruff format --check sksim tests examples benchmarks
	$(PY) -m ruff check --select D --ignore D102,D105,D401 \
	  --config 'lint.pydocstyle.convention = "numpy"' sksim

clean:
	rm -rf $(VENV) build *.egg-info
