"""Turns Google's DeepLabv3 MobileNetV2 TFLite model (shared fixture) into a TF checkpoint.

The TFLite graph keeps the published checkpoint's scope names (`MobilenetV2/expanded_conv_3/
expand/weights`, `aspp0/weights`, `logits/semantic/weights`, ...), with batch norm folded into a
per-layer bias. We rebuild the unfolded variables: weights transposed to TF layout, and a batch norm
whose gamma = 1, moving_mean = 0, moving_variance = 1 - epsilon and beta = the folded bias, which
computes exactly `conv + bias`. The result is a checkpoint with the published variable names and
Google-trained weights.
"""
import numpy as np

from deeplab.compat import tf

TFLITE_CONFIG = dict(model_variant='mobilenet_v2', num_classes=21, depth_multiplier=0.5,
                     output_stride=8, atrous_rates=(), decoder_output_stride=0)


def tflite_weights(tflite_path):
  """{published variable name: numpy value} from the TFLite model's constant tensors."""
  interpreter = tf.lite.Interpreter(model_path=tflite_path)
  interpreter.allocate_tensors()
  values = {}
  for detail in interpreter.get_tensor_details():
    name = detail['name']
    if name.endswith('weights'):
      # conv [out, kh, kw, in] and depthwise [1, kh, kw, C] -> TF [kh, kw, in, out] / [kh, kw, C, 1]
      values[name] = np.transpose(interpreter.get_tensor(detail['index']), (1, 2, 3, 0))
    elif name.endswith('_bias'):
      layer = name.rsplit('/', 1)[0]
      key = f'{layer}/biases' if layer == 'logits/semantic' else f'{layer}/BatchNorm/beta'
      values[key] = interpreter.get_tensor(detail['index'])
  return values


def write_reference_checkpoint(tflite_path, prefix):
  """Saves the TFLite model's weights as a checkpoint at `prefix`; returns the variable names."""
  from deeplab import model
  from deeplab.config import ModelConfig
  config = ModelConfig(**TFLITE_CONFIG)
  values = tflite_weights(tflite_path)
  with tf.Graph().as_default():
    model.logits(tf.compat.v1.placeholder(tf.float32, [1, 257, 257, 3]), config)
    variables = tf.compat.v1.global_variables()
    assignments = []
    for variable in variables:
      name = variable.op.name
      epsilon = 1e-3 if name.startswith('MobilenetV2/') else config.batch_norm_epsilon
      if name in values:
        value = values.pop(name)
      elif name.endswith('/BatchNorm/gamma'):
        value = np.ones(variable.shape, np.float32)
      elif name.endswith('/BatchNorm/moving_mean'):
        value = np.zeros(variable.shape, np.float32)
      elif name.endswith('/BatchNorm/moving_variance'):
        value = np.full(variable.shape, 1.0 - epsilon, np.float32)  # sqrt(var + eps) == 1
      else:
        raise KeyError(f'the TFLite model has no value for {name}')
      assignments.append(variable.assign(value))
    assert not values, f'TFLite tensors with no model variable: {sorted(values)}'
    with tf.compat.v1.Session() as session:
      session.run(assignments)
      tf.compat.v1.train.Saver(variables).save(session, prefix, write_meta_graph=False)
  return [v.op.name for v in variables]


def reference_checkpoint_and_photos(folder):
  """(ModelConfig, checkpoint prefix, fixture photos RGB uint8, Google's .tflite path) of Google's
  DeepLabv3 weights written as a checkpoint in `folder`; skips the test when the shared fixtures are
  absent."""
  from PIL import Image

  from deeplab.config import ModelConfig
  from tests.conftest import require_fixtures
  reference = require_fixtures('reference_models', 'tflite_support', 'deeplabv3.tflite')
  photos = [np.asarray(Image.open(path).convert('RGB'))
            for path in sorted(require_fixtures('photos').glob('image*.jpg'))]
  prefix = str(folder / 'model.ckpt')
  write_reference_checkpoint(str(reference), prefix)
  return ModelConfig(**TFLITE_CONFIG), prefix, photos, reference
