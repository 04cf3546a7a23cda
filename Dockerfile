# DIMBA on a CUDA cluster: mamba-ssm and causal-conv1d compiled against the image's own PyTorch.
#   make docker-build [TORCH_CUDA_ARCH_LIST="8.0;9.0"] [MAX_JOBS=8]
#   make docker-train CONFIG=configs/gpu/ddp-bf16.yaml
ARG BASE_IMAGE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-devel
FROM ${BASE_IMAGE}

ARG TORCH_CUDA_ARCH_LIST="8.0;9.0"
ARG MAX_JOBS=8
ARG MAMBA_SSM_VERSION=2.2.4
ARG CAUSAL_CONV1D_VERSION=1.5.0.post8

ENV TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST} \
    MAX_JOBS=${MAX_JOBS} \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DIMBA_CACHE=/workspace/data_cache \
    HF_HOME=/workspace/data_cache/huggingface \
    OMP_WAIT_POLICY=PASSIVE

WORKDIR /workspace

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Pin the image's torch as a constraint, so that nothing below can replace it with another build; then
# the CUDA kernels, built against that torch (no build isolation: they must see the installed torch).
RUN python -c "import torch; print(f'torch=={torch.__version__}')" > /workspace/torch-constraint.txt \
    && pip install --no-build-isolation -c /workspace/torch-constraint.txt \
        "causal-conv1d==${CAUSAL_CONV1D_VERSION}" "mamba-ssm==${MAMBA_SSM_VERSION}"

# The project last, so that code changes do not rebuild the kernels.
COPY pyproject.toml README.md ./
COPY dimba ./dimba
COPY dimba/configs ./configs
RUN pip install -c /workspace/torch-constraint.txt --no-build-isolation . \
    && python -c "import dimba, mamba_ssm; print('dimba', dimba.__version__, 'mamba_ssm', mamba_ssm.__version__)"

VOLUME ["/workspace/data_cache", "/workspace/runs"]
ENTRYPOINT ["dimba"]
CMD ["fit", "--config", "configs/base.yaml", "--config", "configs/gpu/ddp-bf16.yaml", \
     "--model", "configs/model/base-100m.yaml", "--data", "configs/data/tinystories.yaml"]
