# The project image: every step (`python -m steps.<name>`); the Kubeflow components (pipelines/kubeflow/),
# the TFJob pods of distributed training and, with `python -m pipelines.valohai.config --image=...`,
# every Valohai execution run in it. Build and test: `make image`, `make image-test` (docs/image.md).
#
#   --build-arg TENSORFLOW=cuda   (default) tensorflow[and-cuda]: the CUDA, cuDNN and NCCL libraries that
#                                 TensorFlow release was built against come as pip packages (+6.9 GB)
#   --build-arg TENSORFLOW=cpu    tensorflow-cpu, for machines without an NVIDIA GPU (+1.8 GB)
#   --build-arg BASE_IMAGE=...    any Debian-based image with CPython 3.11.4 or newer as `python`
#   --build-arg SOURCE_COMMIT=... the git commit of the tree (pipelines/image.sh passes it)
#
# Not the official tensorflow/tensorflow:<version>-gpu image: its system CUDA/cuDNN have lagged the ones
# TensorFlow loads (tensorflow/tensorflow#94593, 2025: latest-gpu finds no GPU because of a CUDA/cuDNN
# mismatch; #62412: the 2.15 GPU image finds no GPU though nvidia-smi does). The pip NVIDIA libraries are
# registered with the dynamic loader instead (pipelines/install_requirements.sh).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
ARG TENSORFLOW=cuda

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONPATH=/app
WORKDIR /app

# Dependencies before code, so a code change reuses this layer. Everything comes from the pinned files
# as pip reads them: the steps' requirements with the chosen TensorFlow build, and what the Kubeflow
# components and the TFJob launcher need (requirements/kubeflow.txt), in one resolver run.
COPY requirements.txt ./
COPY requirements/ requirements/
COPY pipelines/install_requirements.sh pipelines/
RUN sh pipelines/install_requirements.sh "$TENSORFLOW" requirements/kubeflow.txt

COPY deeplab/ deeplab/
COPY steps/ steps/
COPY pipelines/ pipelines/

# The commit the code came from (the image has no .git): model.json records it (deeplab/lineage.py).
# pipelines/image.sh passes it, `-dirty` when tracked files differed; empty: the package version only.
ARG SOURCE_COMMIT=
ENV DEEPLAB_SOURCE_COMMIT=${SOURCE_COMMIT}

# Not root. /app stays writable: train keeps its resumable run folder in the working directory.
# The last command fails the build on a base whose Python is older than the steps need (steps/__init__.py).
RUN useradd --create-home --uid 1000 deeplab && chown deeplab /app \
 && python -m steps.train --help > /dev/null
USER deeplab

CMD ["python", "-m", "steps.train", "--help"]
