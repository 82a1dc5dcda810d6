"""Makes tf-slim 1.1.0 work on TensorFlow 2.x in tf.compat.v1 graph mode.

Import this module before building any graph; it is idempotent and patches only what is missing,
so it is a no-op on TensorFlow versions that still have the names.

tf-slim 1.1.0 reaches private TensorFlow names that later TF releases removed:
`ops.Tensor`, `ops.IndexedSlices`, `array_ops.stack/unstack`, `control_flow_ops.cond/case/
while_loop/Assert` and `variable_scope.variable`. Each is restored from its public equivalent.
tf-slim's `batch_norm` is not used at all (it reaches a Keras module no package ships); the
library's own `deeplab.nets.batch_norm` replaces it with the same variable names.
"""
import warnings

import tensorflow as tf
from tensorflow.python.framework import ops
from tensorflow.python.ops import array_ops, control_flow_ops, variable_scope

_MISSING_NAMES = (
    (ops, 'Tensor', tf.Tensor),
    (ops, 'IndexedSlices', tf.IndexedSlices),
    (array_ops, 'stack', tf.stack),
    (array_ops, 'unstack', tf.unstack),
    (control_flow_ops, 'cond', tf.compat.v1.cond),
    (control_flow_ops, 'case', tf.compat.v1.case),
    (control_flow_ops, 'while_loop', tf.compat.v1.while_loop),
    (control_flow_ops, 'Assert', tf.compat.v1.Assert),
    (variable_scope, 'variable', tf.compat.v1.Variable),
)


def patch_tf_slim() -> None:
  for module, name, replacement in _MISSING_NAMES:
    if not hasattr(module, name):
      setattr(module, name, replacement)


patch_tf_slim()
tf.compat.v1.disable_eager_execution()

import tf_slim as slim  # noqa: E402  (must come after the patch)

__all__ = ['tf', 'slim']

# tf-slim's layers go through Keras' legacy `layer.apply`, which warns on every layer built.
warnings.filterwarnings('ignore', message='`layer.apply` is deprecated')
