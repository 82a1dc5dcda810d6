#!/bin/sh
# Installs requirements.txt with the CUDA build of TensorFlow into a python:3.11-slim image (the Docker
# image build and every Valohai execution run this, as root). requirements.txt pins tensorflow-cpu for
# CPU machines; here that line becomes tensorflow[and-cuda] of the same version, whose extra pins the
# CUDA, cuDNN and NCCL pip packages that TensorFlow release was built against. Everything else is
# installed from the same pins. The NVIDIA libraries are then registered with the dynamic loader, so
# TensorFlow finds them whatever LD_LIBRARY_PATH the runner sets.
set -eu
cd "$(dirname "$0")/.."
pinned=$(sed -n 's/^tensorflow-cpu==\([0-9.]*\).*/\1/p' requirements.txt)
filtered=$(mktemp)
grep -v '^tensorflow-cpu==' requirements.txt > "$filtered"
echo "tensorflow[and-cuda]==$pinned" >> "$filtered"
python -m pip install --quiet --no-cache-dir --disable-pip-version-check --root-user-action=ignore -r "$filtered"
rm -f "$filtered"
python -c 'import glob, os, nvidia
for folder in nvidia.__path__:
  print("\n".join(sorted(glob.glob(os.path.join(folder, "*", "lib")))))' > /etc/ld.so.conf.d/nvidia-pip.conf
ldconfig
