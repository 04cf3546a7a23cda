# Run inside an activated virtual environment (see README). CPU set-up never touches the `cuda` extra.
PYTHON ?= python
CONFIG ?= configs/base.yaml
CKPT ?= runs/base/checkpoints/last.ckpt
PROMPT ?= ROMEO:
IMAGE ?= dimba:latest
# What `make docker-train` runs: the GPU recipe stacked on the base config (override to choose another).
DOCKER_CONFIG ?= --config configs/base.yaml --config configs/gpu/ddp-bf16.yaml \
  --model configs/model/base-100m.yaml --data configs/data/tinystories.yaml
DATA_DIR ?= $(CURDIR)/data_cache
RUNS_DIR ?= $(CURDIR)/runs
TORCH_CUDA_ARCH_LIST ?= 8.0;9.0
MAX_JOBS ?= 8
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: install install-cuda data train predict test test-slow test-gpu bench lint docker-build docker-train

install:  ## CPU set-up: the local CPU torch wheel first, so nothing pulls a CUDA build
	$(PYTHON) -m pip install torch==2.13.0
	$(PYTHON) -m pip install -e ".[dev]"

install-cuda:  ## GPU machines: build mamba-ssm and causal-conv1d against the torch already installed
	$(PYTHON) -m pip install -e ".[dev]"
	TORCH_CUDA_ARCH_LIST="$(TORCH_CUDA_ARCH_LIST)" MAX_JOBS=$(MAX_JOBS) \
	  $(PYTHON) -m pip install --no-build-isolation "causal-conv1d>=1.4" "mamba-ssm>=2.2"

data:  ## fetch and prepare the default corpus into the cache folder
	$(PYTHON) -m dimba.data.shakespeare

train:
	dimba fit --config $(CONFIG)

predict:
	dimba predict --ckpt_path $(CKPT) --prompt "$(PROMPT)"

test:  ## the default suite: CPU only, no slow tests
	$(PYTHON) -m pytest -q -m "not slow and not gpu" --durations=15

test-slow:
	$(PYTHON) -m pytest -q -m "slow and not gpu"

test-gpu:
	$(PYTHON) -m pytest -q -m gpu

bench:
	dimba bench-mamba2

lint:
	$(PYTHON) -m ruff check dimba tests
	hadolint Dockerfile

docker-build:
	docker build --build-arg TORCH_CUDA_ARCH_LIST="$(TORCH_CUDA_ARCH_LIST)" --build-arg MAX_JOBS=$(MAX_JOBS) \
	  -t $(IMAGE) .

docker-train:
	docker run --rm --gpus all --ipc=host \
	  -v $(DATA_DIR):/workspace/data_cache -v $(RUNS_DIR):/workspace/runs \
	  $(IMAGE) fit $(DOCKER_CONFIG)
