# The project image: every step (`python -m steps.<name>`) on CUDA TensorFlow; the Kubeflow components
# (pipelines/kubeflow/) and the TFJob pods of distributed training run in it.
# Build: docker build -t deeplab-pipelines:latest .
#
# GPU: the base is plain Python; pipelines/install_requirements.sh installs tensorflow[and-cuda] of the
# version requirements.txt pins (tensorflow-cpu there, for CPU machines), which brings the CUDA, cuDNN
# and NCCL libraries that TensorFlow release was built against as pip packages, and registers them
# with the dynamic loader (`pip install --dry-run "tensorflow[and-cuda]==2.21.0"` resolves the CUDA 12.9
# wheels, cuDNN 9.28 and NCCL 2.32). Not the official tensorflow/tensorflow:<version>-gpu image: its system
# CUDA/cuDNN have lagged the ones TensorFlow loads (tensorflow/tensorflow#94593, 2025: latest-gpu finds no
# GPU because of a CUDA/cuDNN mismatch; #62412: the 2.15 GPU image finds no GPU though nvidia-smi does).
# The pip libraries alone are not found by the loader either (#63362: python:3.11 + tensorflow[and-cuda]
# lists no GPU on 2.16), hence the ld.so.conf registration. Unverified here: no Docker engine, no GPU.
# Valohai runs the same script on the same base.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONPATH=/app
WORKDIR /app

# Dependencies before code, so a code change reuses this layer. Kubeflow's lightweight components run
# kfp's executor inside the image, and the distributed pipeline's launcher the Training Operator SDK:
# both are installed with the pins of requirements-dev.txt.
COPY requirements.txt requirements-dev.txt ./
COPY pipelines/install_requirements.sh pipelines/
RUN sh pipelines/install_requirements.sh \
 && python -m pip install --quiet --root-user-action=ignore "$(grep '^kfp==' requirements-dev.txt)" \
      "$(grep '^kubeflow-training==' requirements-dev.txt)"

COPY deeplab/ deeplab/
COPY steps/ steps/
COPY pipelines/ pipelines/

# Not root. /app stays writable: train keeps its resumable run folder in the working directory.
RUN useradd --create-home --uid 1000 deeplab && chown deeplab /app
USER deeplab

CMD ["python", "-m", "steps.train", "--help"]
