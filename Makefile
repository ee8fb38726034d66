# Two entry points that work on a fresh machine: `make demo` and `make test`.
# On a CPU-only machine torch comes pinned through constraints/cpu.txt, so pip
# takes the local CPU build instead of gigabytes of CUDA wheels.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints/cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints/cpu.txt -e ".[models,semantic,ray,openai,test]"
	touch $@

demo: setup
	cd pipelines && ../$(BIN)/datamix run quickstart.yaml

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/pipeline.py

clean:
	rm -rf pipelines/.datamix .pytest_cache
