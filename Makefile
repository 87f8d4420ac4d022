# `make demo` and `make test` are all a user types on a fresh clone: each creates .venv
# and installs the project (pinned by constraints.txt) the first time it is needed.

VENV := .venv
BIN := $(VENV)/bin
# python3.12 may be a pyenv shim that fails when 3.12 is not the selected version, so
# probe candidates by running them rather than trusting `command -v`.
PYTHON ?= $(shell for p in python3.12 $(HOME)/.pyenv/versions/3.12*/bin/python3.12 /usr/bin/python3.12 /usr/local/bin/python3.12; do \
	"$$p" -c 'import sys; assert sys.version_info[:2] >= (3, 12)' >/dev/null 2>&1 && { echo "$$p"; break; }; done)

.PHONY: demo test benchmark clean

$(BIN)/.installed: pyproject.toml constraints.txt
	@test -n "$(PYTHON)" || { echo "Python 3.12 not found: install it or run 'make PYTHON=/path/to/python3.12 ...'" >&2; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test,analysis,coverage]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/pyro-dirichlet run --model lenet5 --dataset mnist --out runs/demo

test: $(BIN)/.installed
	$(BIN)/python -m pytest

benchmark: $(BIN)/.installed
	$(BIN)/python -m analysis.benchmark_core

# Issue 5's speed suite (SVI vs training epochs, Pyro's overhead, posterior summary time,
# pruned inference latency and memory): one run, medians of 3; see benchmarks/__init__.py.
.PHONY: benchmark-suite
benchmark-suite: $(BIN)/.installed
	$(BIN)/python -m benchmarks --repeats 3 --json benchmarks/results/suite.json

clean:
	rm -rf $(VENV) runs build *.egg-info
