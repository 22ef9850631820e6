# One source of truth for set-up: make demo, make test, the Dockerfiles and CI all go through here.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
DEMO    ?= demo_data
OUT     ?= shards
N       ?= 48

.PHONY: venv venv-ml venv-gpu demo demo-data test bench bench-gpu gpu-wheels clean

# Core engine: Ray Data, WebDataset, codecs, readers (enough for every CPU pipeline of the demo).
$(BIN)/.core: requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $@

# Model backends (torch, diffusers, transformers, open_clip, faiss) and simple-lama-inpainting,
# installed with --no-deps after the rest: its own pins would downgrade numpy and break pyarrow.
$(BIN)/.ml: $(BIN)/.core requirements-ml.txt
	$(BIN)/pip install -q -r requirements-ml.txt
	$(BIN)/pip install -q --no-deps -r requirements-nodeps.txt
	touch $@

venv: $(BIN)/.core
venv-ml: $(BIN)/.ml

# GPU hosts (and docker/Dockerfile.gpu): the model back-ends with faiss-gpu in place of faiss-cpu.
venv-gpu: $(BIN)/.ml
	$(BIN)/pip uninstall -y -q faiss-cpu
	$(BIN)/pip install -q -r docker/requirements-gpu.txt

demo-data: venv
	$(BIN)/idd demo-data $(DEMO) --n $(N) --seed 0

# The main job on the embedded default: local Ray, bundled demo data, weight-free models.
demo: demo-data
	bash pipelines/demo.sh $(DEMO) $(OUT)

test: venv-ml
	command -v chromium >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium)
	$(BIN)/python -m pytest -q tests

bench: venv
	$(BIN)/python bench/bench_tasks.py

# GPU hosts with only Python and a preinstalled torch (no venv, no package index): `make gpu-wheels` here
# fetches the few wheels bench/bench_gpu.py needs into $(GPU_WHEELS) (ignored, copied along);
# `make bench-gpu` there installs them into $(GPU_SITE) (--no-index --no-deps) and runs the benchmark.
GPU_WHEELS ?= gpu-wheels
GPU_SITE   ?= /tmp/idd-gpu-site
GPU_PY     ?= python3
ARGS       ?=
gpu-wheels:
	bash bench/gpu_wheels.sh download $(GPU_WHEELS)

bench-gpu:
	bash bench/gpu_wheels.sh install $(GPU_WHEELS) $(GPU_SITE) $(GPU_PY)
	PYTHONPATH=$(GPU_SITE):$(CURDIR) $(GPU_PY) bench/bench_gpu.py $(ARGS)

clean:
	rm -rf $(VENV) $(DEMO) build *.egg-info
