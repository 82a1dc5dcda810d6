"""DeepLab semantic segmentation on TensorFlow 2.x (tf.compat.v1 graph mode) and tf-slim.

The library has no orchestrator imports and one command line, the demo's data generator
(`python -m deeplab.datasets.synthetic`): `steps/` parses the steps' flags and calls it.
Modules that build graphs import `deeplab.compat` first.
"""

# The project's version: what a model.json records as the code when no git commit is known
# (deeplab/lineage.py). Raised with each release of the steps' artifacts.
__version__ = '0.1.0'
