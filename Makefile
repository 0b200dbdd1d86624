# Two entry points for a fresh machine (see README.md): `make demo` and `make test`.
# Both install what they need first; re-running skips what is already installed.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.hwact-installed
# the TOSA tools (Ethos-U backend) in their own environment: tosa-tools pins numpy < 2.2 (docs/ethos-u.md)
TOSA_VENV  ?= .venv-tosa
TOSA_STAMP := $(TOSA_VENV)/.hwact-installed
# ExecuTorch's Arm backend, only for benchmarks/bench_ethos_u_executorch.py (never needed by test or demo)
ET_VENV  ?= .venv-executorch
ET_STAMP := $(ET_VENV)/.hwact-installed
# litert-torch's PT2E -> TFLite flow, only for benchmarks/bench_ethos_u_litert.py (Vela from .venv-tosa)
LITERT_VENV  ?= .venv-litert
LITERT_STAMP := $(LITERT_VENV)/.hwact-installed

.PHONY: install tools tosa-env executorch-env litert-env demo test bench

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0          # first: the CPU wheel, never a CUDA build
	$(PY) -m pip install -q -e '.[dev,hf,tvm]'   # hf: the Hugging Face intake; tvm: the tvm-* targets
	touch $(STAMP)

install: $(STAMP)

$(TOSA_STAMP):
	python3 -m venv $(TOSA_VENV)
	$(TOSA_VENV)/bin/pip install -q tosa-tools==2026.8.0 ethos-u-vela==5.2.0
	touch $(TOSA_STAMP)

tosa-env: $(TOSA_STAMP)

# executorch 1.5.1 names no torch; its [ethos-u] extra pins tosa-tools 2026.5.0 (its serializer API) and
# Vela 5.1.0: Vela is 5.2.0 here, the version hwact's own flow compiles with, so the cycles compare
$(ET_STAMP):
	python3 -m venv $(ET_VENV)
	$(ET_VENV)/bin/pip install -q torch==2.13.0    # the CPU wheel, as in .venv
	$(ET_VENV)/bin/pip install -q executorch==1.5.1 tosa-tools==2026.5.0 ml_dtypes==0.5.1 ethos-u-vela==5.2.0
	touch $(ET_STAMP)

executorch-env: $(ET_STAMP)

# litert-torch 0.10.0 takes torch >=2.4,<2.15: the CPU wheel of .venv's torch first, or pip picks a CUDA
# build; it pulls ai-edge-litert 2.3.0 (the interpreter), litert-converter 0.5.0, ai-edge-quantizer 0.10.0,
# torchao 0.18.0, jax 0.10.2 and transformers 5.25.0 (no TensorFlow wheel)
$(LITERT_STAMP):
	python3 -m venv $(LITERT_VENV)
	$(LITERT_VENV)/bin/pip install -q torch==2.13.0    # the CPU wheel, as in .venv
	$(LITERT_VENV)/bin/pip install -q litert-torch==0.10.0 ai-edge-litert==2.3.0 litert-converter==0.5.0 \
	    ai-edge-quantizer==0.10.0 torchao==0.18.0
	touch $(LITERT_STAMP)

litert-env: $(LITERT_STAMP)

tools:
	scripts/install-tools.sh

demo: install
	$(VENV)/bin/hwact demo --force   # its own folder, ./hwact-demo: replaced on a rerun

test: install tools tosa-env
	$(PY) -m pytest -q

bench: install tools tosa-env
	$(PY) benchmarks/run_all.py
