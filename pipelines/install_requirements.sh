#!/bin/sh
# Installs the steps' pinned requirements with one build of TensorFlow, as root: the image build runs it,
# and so does every Valohai execution on the plain Python base image (valohai.yaml without --image).
#
#   sh pipelines/install_requirements.sh cpu|cuda [REQUIREMENTS_FILE ...]
#
# cpu installs requirements.txt (tensorflow-cpu), cuda requirements/cuda.txt (tensorflow[and-cuda] of the
# same version, whose extra pins the CUDA, cuDNN and NCCL pip packages that release was built against).
# Further files (the image adds requirements/kubeflow.txt) join the same pip run, so one resolver sees
# every pin. pip reads the files itself: comments, options and `-r` lines mean what they mean to pip.
# cuda then registers the NVIDIA libraries with the dynamic loader, so TensorFlow finds them whatever
# LD_LIBRARY_PATH the runner sets (pip's libraries alone are not found: tensorflow/tensorflow#63362).
set -eu
cd "$(dirname "$0")/.."
case "${1:-}" in
  cpu) tensorflow=requirements.txt ;;
  cuda) tensorflow=requirements/cuda.txt ;;
  *) echo "error: the TensorFlow build must be cpu or cuda, got '${1:-}' (usage: $0 cpu|cuda [REQUIREMENTS_FILE ...])" >&2
     exit 1 ;;
esac
flavour=$1
shift
for extra in "$@"; do set -- "$@" -r "$extra"; shift; done  # each further file as `-r FILE`
python -m pip install --quiet --no-cache-dir --disable-pip-version-check --root-user-action=ignore \
  -r "$tensorflow" "$@"
if [ "$flavour" = cuda ]; then
  python -c 'import glob, os, nvidia
for folder in nvidia.__path__:
  print("\n".join(sorted(glob.glob(os.path.join(folder, "*", "lib")))))' > /etc/ld.so.conf.d/nvidia-pip.conf
  ldconfig
fi
