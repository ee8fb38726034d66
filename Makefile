# Two entry points that work on a fresh machine: `make demo` and `make test`.
# On a CPU-only machine torch comes pinned through constraints/cpu.txt, so pip
# takes the local CPU build instead of gigabytes of CUDA wheels.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test bench clean browser experiment

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints/cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints/cpu.txt -e ".[models,semantic,ray,openai,eval,test]"
	# compile the MinHash kernels here, once, instead of in the first `make demo` (numba caches them)
	$(BIN)/python -m datamix.dedup.warm
	touch $@

demo: setup
	cd pipelines && ../$(BIN)/datamix run quickstart.yaml

test: setup
	$(BIN)/python -m pytest -q

# The report's browser test (tests/report/test_report_browser.py) drives Debian's chromium;
# without it that test is skipped with its reason. Needs root (or sudo) and apt.
browser:
	command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium; }

bench: setup
	$(BIN)/python benchmarks/pipeline.py

# The forgetting miniature (pipelines/forgetting-miniature.yaml): a vendor model trained from scratch,
# four fine-tuning arms, three replicates; prints dm.forgetting per replicate and the mean and spread.
experiment: setup
	cd pipelines && ../$(BIN)/datamix run forgetting-miniature.yaml --sweep rep=0,1,2

clean:
	rm -rf pipelines/.datamix .pytest_cache
