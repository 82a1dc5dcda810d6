"""The Docker images, named once: the public base the project image is built on (and that Valohai
runs the steps in), and the project image itself (Dockerfile; the Kubeflow components run in it)."""
import os

# The official TensorFlow GPU image of the TensorFlow version pinned in requirements.txt.
BASE_IMAGE = 'tensorflow/tensorflow:2.21.0-gpu'
# Built by `docker build -t deeplab-pipelines:latest .`; push it to your registry and pass that name as
# the pipeline's `image` argument (or set DEEPLAB_IMAGE when compiling) to run on a cluster.
PROJECT_IMAGE = os.environ.get('DEEPLAB_IMAGE', 'deeplab-pipelines:latest')
