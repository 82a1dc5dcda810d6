# The project image: every step (`python -m steps.<name>`) on CUDA TensorFlow; the Kubeflow components
# (pipelines/kubeflow/) run in it. Build: docker build -t deeplab-pipelines:latest .
#
# GPU swap: requirements.txt pins tensorflow-cpu for CPU machines. The base is the official GPU image
# of that same TensorFlow version; pipelines/install_requirements.sh checks the versions agree and
# installs every other pin from requirements.txt (it leaves the tensorflow-cpu line out, which would
# otherwise put the CPU build over the CUDA one). Valohai runs the same script on the same base.
FROM tensorflow/tensorflow:2.21.0-gpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONPATH=/app
WORKDIR /app

# Dependencies before code, so a code change reuses this layer. Kubeflow's lightweight components run
# kfp's executor inside the image: kfp is installed with the pin of requirements-dev.txt.
COPY requirements.txt requirements-dev.txt ./
COPY pipelines/install_requirements.sh pipelines/
RUN sh pipelines/install_requirements.sh \
 && python -m pip install --quiet --root-user-action=ignore "$(grep '^kfp==' requirements-dev.txt)"

COPY deeplab/ deeplab/
COPY steps/ steps/
COPY pipelines/ pipelines/

# Not root. /app stays writable: train keeps its resumable run folder in the working directory.
RUN useradd --create-home --uid 1000 deeplab && chown deeplab /app
USER deeplab

CMD ["python", "-m", "steps.train", "--help"]
