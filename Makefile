# Two commands from a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
# Reuse a torch that is already installed (e.g. a CUDA build):
#   make install VENV_ARGS=--system-site-packages
VENV_ARGS ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test demo bench clean gpu-wheels gpu-check gpu-check-dry

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV_ARGS) $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# A bare `torch` requirement would pull the CUDA build (gigabytes); take the
	# CPU wheel first unless a torch is already importable.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[test,examples,umap]"
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest

demo: install
	$(BIN)/flashscenic demo --out demo_out

# The references live in their own venv: flashscenic 0.2.0 has our package name.
REF := .venv-ref
$(REF)/.installed:
	test -x $(REF)/bin/python || $(PYTHON) -m venv $(REF)
	$(REF)/bin/python -c "import torch" 2>/dev/null || $(REF)/bin/python -m pip install -q torch==2.13.0
	$(REF)/bin/python -m pip install -q flashscenic==0.2.0 pyscenic==0.12.1 ctxcore==0.2.0 "setuptools<81"
	touch $@

# rustscenic, the fastest other CPU AUCell, is timed in its own venv too.
RUST := .venv-rustscenic
$(RUST)/.installed:
	test -x $(RUST)/bin/python || $(PYTHON) -m venv $(RUST)
	$(RUST)/bin/python -m pip install -q rustscenic==0.5.1 numpy scipy anndata pandas
	touch $@

# scenic-rs, the Rust port of the whole pipeline (AUCell and ctx rows), in its own venv too.
SCENIC_RS := .venv-scenic-rs
$(SCENIC_RS)/.installed:
	test -x $(SCENIC_RS)/bin/python || $(PYTHON) -m venv $(SCENIC_RS)
	$(SCENIC_RS)/bin/python -m pip install -q scenic-rs==0.3.0 numpy scipy pandas
	touch $@

bench: install $(REF)/.installed $(RUST)/.installed $(SCENIC_RS)/.installed
	$(BIN)/python benchmarks/aucell.py --ref-python $(REF)/bin/python --rustscenic-python $(RUST)/bin/python \
		--scenic-rs-python $(SCENIC_RS)/bin/python --out BENCHMARKS.md
	$(BIN)/python benchmarks/cistarget.py --ref-python $(REF)/bin/python --out BENCHMARKS.md
	$(BIN)/python benchmarks/cistarget.py --ctx --ref-python $(REF)/bin/python --scenic-rs-python $(SCENIC_RS)/bin/python \
		--out BENCHMARKS.md
	$(BIN)/python benchmarks/database_load.py --out BENCHMARKS.md
	$(BIN)/python benchmarks/store.py --out BENCHMARKS.md
	$(BIN)/python benchmarks/scale.py --out BENCHMARKS.md
	$(BIN)/python benchmarks/worker_allocator.py --out BENCHMARKS.md
	$(BIN)/python benchmarks/multi_run.py --out BENCHMARKS.md
	$(BIN)/python benchmarks/multi_run.py --memory --out BENCHMARKS.md
	$(BIN)/python benchmarks/whole_run.py --overhead --out BENCHMARKS.md
	$(BIN)/python benchmarks/whole_run.py --atlas --out BENCHMARKS.md

# The GPU check (benchmarks/gpu_check.py). A lent GPU machine has no network: the wheels it
# lacks travel in .whl/ (git-ignored; the device tool's carry), at most 56 MiB.
WHEELS := .whl
GPU_SITE := .gpu-site
WHEEL_PLATFORMS := $(foreach p,manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64,--platform $(p))

gpu-wheels:
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		$(WHEEL_PLATFORMS) -d $(WHEELS) -r benchmarks/gpu-wheels.txt
	$(PYTHON) benchmarks/gpu_check.py --wheels $(WHEELS)

# On the GPU machine: install the wheels offline beside its own torch, then every step.
gpu-check:
	test -d $(WHEELS) || { echo "no $(WHEELS)/: run make gpu-wheels where the registry is, then carry it"; exit 2; }
	python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target $(GPU_SITE) $(WHEELS)/*.whl
	PYTHONPATH=$(CURDIR)/$(GPU_SITE):$(CURDIR) python3 benchmarks/gpu_check.py

# The same script here (and in CI): the CPU device, small sizes, fake GPUs for the cluster step.
gpu-check-dry: install
	$(BIN)/python benchmarks/gpu_check.py --dry --out $(or $(GPU_CHECK_OUT),benchmarks/_work/gpu-check-dry)

clean:
	rm -rf $(GPU_SITE) $(VENV) .venv-ref .venv-rustscenic .venv-scenic-rs build *.egg-info .pytest_cache
