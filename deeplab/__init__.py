"""DeepLab semantic segmentation on TensorFlow 2.x (tf.compat.v1 graph mode) and tf-slim.

The library has no command line and no orchestrator imports: `steps/` parses flags and calls it.
Modules that build graphs import `deeplab.compat` first.
"""
