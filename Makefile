# The two commands of the README:
#   make demo   set up, start the local S3 server, adapt MiniLM to the bundled sample data, register it
#   make test   set up, run the test suite
VENV   ?= .venv
PYTHON ?= python3
PY      = $(VENV)/bin/python
PYTEST_ARGS ?=
# Two test processes: most tests wait on subprocesses and servers, so 2 workers on 2 cores
# finish the suite in about 8 minutes instead of 10.
PYTEST_WORKERS ?= 2

.PHONY: setup setup-dev browser lint demo test bench bench-full clean-venv

# `make setup`: what `make demo` needs (the project and its runtime libraries); `make setup-dev` adds the
# test tools (pytest, ruff, import-linter, selenium, Ray, Kubeflow's schemas), which `make test` needs.
setup: $(VENV)/.installed
setup-dev: $(VENV)/.installed-dev

# torch first and pinned, with pip: 2.13.0 is the CPU build on these machines (a local wheel pip finds);
# an unpinned torch would pull the newest CUDA build (GBs). Then the project, held to the releases the suite
# passed with (constraints.txt), by uv when it can be had (installed into the venv from PyPI in seconds;
# it resolves and installs about 5x faster than pip), else by pip. ADAPTFLOW_NO_UV=1 forces pip.
# --compile-bytecode: uv writes no .pyc by default (pip does), and where PYTHONDONTWRITEBYTECODE is set
# (these machines set it) every process would then compile torch, transformers and Prefect from source
# again: seconds per `adaptflow` command and per training worker, minutes over the test suite.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check torch==2.13.0
	@if [ -z "$$ADAPTFLOW_NO_UV" ] && { [ -x $(VENV)/bin/uv ] || $(PY) -m pip install --quiet --disable-pip-version-check uv >/dev/null 2>&1; }; \
	then echo "installing with uv"; $(VENV)/bin/uv pip install --quiet --compile-bytecode --python $(PY) -c constraints.txt -e .; \
	else echo "installing with pip (uv not available)"; $(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e .; fi
	rm -f $(VENV)/.installed-dev
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	@if [ -z "$$ADAPTFLOW_NO_UV" ] && [ -x $(VENV)/bin/uv ]; \
	then $(VENV)/bin/uv pip install --quiet --compile-bytecode --python $(PY) -c constraints.txt -e ".[dev]"; \
	else $(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev]"; fi
	touch $@

demo: setup
	$(VENV)/bin/adaptflow stack up
	$(VENV)/bin/adaptflow run

# pytest exits 5 when nothing was collected (e.g. PYTEST_ARGS selected no test): say so
# plainly and do not count it as a failure. Collection errors exit 2 and still fail.
# The browser tests drive Debian's Chromium headless. Installed here where we are root with apt
# (CI, containers); elsewhere those tests skip with a message saying how to get it.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian's chromium and chromium-driver for the browser tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null \
	  || echo "could not install chromium: the browser tests will be skipped"; \
	else echo "no chromium/chromedriver (install Debian's chromium and chromium-driver): the browser tests will be skipped"; fi

# Style (ruff: lint and format, line length in pyproject.toml) and architecture (import-linter: the
# layers and no cycles, contracts in pyproject.toml). `ruff format .` and `ruff check --fix .` repair most.
lint: setup-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

test: setup-dev browser lint
	@set +e; $(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile --durations=25 $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest: no tests were selected (exit 5), treated as success"; rc=0; fi; exit $$rc

# Benchmarks (not part of the tests; they read SST-2 from ../shared/data/sst2 and take
# about 40 minutes on 2 CPU cores). Each prints a table and writes bench-results/*.json.
bench: setup-dev
	$(PY) -m bench.quality
	$(PY) -m bench.speed
	$(PY) -m bench.overhead

# Quality without a budget: full fine-tuning and LoRA on the whole SST-2 training set, 2 passes
# (about an hour on 2 CPU cores: 89.7% for both, see docs/benchmarks.md; minutes on one GPU).
bench-full: setup-dev
	$(PY) -m bench.quality --train-samples 0 --epochs 2 --batch-size 32 --seeds 42 --strategies full_fine_tuning lora

clean-venv:
	rm -rf $(VENV)
