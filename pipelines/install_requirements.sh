#!/bin/sh
# Installs requirements.txt into an official tensorflow/tensorflow:<version>-gpu image (the Docker image
# build and every Valohai execution run this). requirements.txt pins tensorflow-cpu for CPU machines;
# the image already holds the CUDA build of TensorFlow, so that one line is left out and the installed
# TensorFlow must be the pinned version. Everything else is installed from the same pins.
set -eu
cd "$(dirname "$0")/.."
pinned=$(sed -n 's/^tensorflow-cpu==\([0-9.]*\).*/\1/p' requirements.txt)
installed=$(python -c 'import importlib.metadata as m
for dist in ("tensorflow", "tensorflow-cpu"):
  try:
    print(m.version(dist)); break
  except m.PackageNotFoundError:
    pass')
if [ "$installed" != "$pinned" ]; then
  echo "error: requirements.txt pins TensorFlow $pinned but this image has ${installed:-none}" >&2
  exit 1
fi
filtered=$(mktemp)
grep -v '^tensorflow-cpu==' requirements.txt > "$filtered"
python -m pip install --quiet --no-cache-dir --disable-pip-version-check --root-user-action=ignore -r "$filtered"
rm -f "$filtered"
