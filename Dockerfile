# syntax=docker/dockerfile:1
# Worker image for `ablate` (compose service `worker`): `docker compose build worker`.
# Pinned to an exact patch release so a rebuild months later resolves the same interpreter.
FROM python:3.11.13-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# libglib2.0-0: some opencv-python-headless builds still load it; everything else ships in wheels.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

# CUDA comes from pip, not from an nvidia/cuda base image: the default PyPI torch wheels for
# linux/x86_64 are CUDA builds that pull the CUDA runtime, cuDNN and NCCL in as nvidia-* wheels, so
# the host needs only the NVIDIA driver + nvidia-container-toolkit. Current PyPI wheels target
# CUDA 13 (driver >= 580). For an older driver pick a matching build at image build time, e.g.
#   docker compose build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 worker
# Installed before the project is copied so code edits do not re-download ~3 GB of wheels.
ARG TORCH_INDEX_URL=""
RUN if [ -n "$TORCH_INDEX_URL" ]; then \
        pip install --index-url "$TORCH_INDEX_URL" "torch>=2.4" "torchvision>=0.19"; \
    else \
        pip install "torch>=2.4" "torchvision>=0.19"; \
    fi

WORKDIR /app
COPY . /app
# Installs the project and its pinned-by-range dependencies (console script `ablate`).
RUN pip install .

# Non-root at run time. The mount points exist in the image, owned by the runtime user, because
# Docker seeds an empty named volume with the image directory's ownership: checkpoints and the
# torch weights cache stay writable without a chown at start-up.
RUN useradd --create-home --uid 1000 --shell /usr/sbin/nologin ablate \
    && mkdir -p /app/runs /home/ablate/.cache \
    && chown -R ablate:ablate /app/runs /home/ablate/.cache
USER ablate

ENTRYPOINT ["ablate"]
CMD ["--help"]
