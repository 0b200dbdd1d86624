# Two entry points for a fresh machine (see README.md): `make demo` and `make test`.
# Both install what they need first; re-running skips what is already installed.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.hwact-installed

.PHONY: install tools demo test bench

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0          # first: the CPU wheel, never a CUDA build
	$(PY) -m pip install -q -e '.[dev,hf]'   # hf: the Hugging Face intake, which the tests cover
	touch $(STAMP)

install: $(STAMP)

tools:
	scripts/install-tools.sh

demo: install
	$(VENV)/bin/hwact demo --force   # its own folder, ./hwact-demo: replaced on a rerun

test: install tools
	$(PY) -m pytest -q

bench: install tools
	$(PY) benchmarks/run_all.py
