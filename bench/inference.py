"""Benchmark: latency per image of every export format, at 257x257 and 513x513.

    python -m bench.inference [--rounds=5] [--iterations=20] [--sizes=257,513] [--threads=2]

One model, DeepLabv3 MobileNetV2 (bench/reference_model.py: Google's weights when the shared
fixture is there), exported as: the frozen graph as built and as exported (`lean_inference_graph`:
batch norm and the image pooling branch folded, labels from the logits) run in a plain TF1
session, as model-zoo clients run the file; that graph as `inference.FrozenGraphPredictor` loads
and runs it (atrous convolutions dilated where the runtime can); the SavedModel; our TFLite float32
and int8 compiled for the size; and the TFLite models of any input size as predict and serve run
them (`inference.load_model`: auto's first choice). Google's own deeplabv3.tflite runs at 257x257.
Every TFLite model runs on the same interpreter (ai-edge-litert) with the same thread count. A
value is the mean milliseconds of `iterations` predictions of one image (after a warm-up),
contenders interleaved round by round.

Every contender of ours turns a uint8 image into labels (scaling inside, argmax inside): the
TensorFlow ones are timed from the session's feed to its fetch of the labels, our fixed-size
TFLite ones from setting the input to the end of the invoke, the served ones from the image to
the labels returned. Google's model takes the image already scaled to [-1, 1] and returns
logits, so it runs twice: `google_tflite_labels` does the same job as ours (the scaling, the
invoke, numpy's argmax over the logits) and is the baseline at 257; `google_tflite` is its invoke
alone, the figure Google's own latency numbers give. Google ships no 513x513 model: there the
baseline is our fixed-size TFLite float, the same weights on Google's runtime compiled for that
size (at 257 it runs as fast as Google's file). Without the fixture the baseline is our TFLite
float at both sizes.
"""
import os
import tempfile
import time

import numpy as np

from bench import harness, reference_model

TRACED_OPS = 8  # the op types whose traced time the table shows (the largest)
TARGETS = {
    257: 'frozen_lean (the file, plain session) <= 1.5 x, tflite_float <= 1.1 x, served_float '
         '<= 1.2 x Google\'s TFLite segmenting the same image (ratios >= 0.667, 0.909, 0.833)',
    513: 'served_float (any size, as serve runs it) <= 1.2 x the fixed-size TFLite float '
         '(ratio >= 0.833)',
}


def _timed(predict, images, iterations):
  """A contender: the mean milliseconds of `iterations` calls of predict(image)."""
  predict(images[0])  # the first run builds kernels and Grappler's rewrite

  def run():
    started = time.perf_counter()
    for index in range(iterations):
      predict(images[index % len(images)])
    return (time.perf_counter() - started) / iterations * 1000
  return run


def _interpreter(path, threads, images, to_labels=False):
  """predict(image) running a TFLite model on `threads` threads; a float input (Google's model)
  gets the image scaled to [-1, 1] as that model expects, done beforehand unless `to_labels`:
  then the call does what turns Google's model into a segmenter like ours (the scaling, the
  invoke, and the argmax over its [1, H, W, classes] logits)."""
  from ai_edge_litert.interpreter import Interpreter
  interpreter = Interpreter(model_path=path, num_threads=threads)
  interpreter.allocate_tensors()
  detail = interpreter.get_input_details()[0]
  as_input = ((lambda image: image[np.newaxis]) if detail['dtype'] == np.uint8 else
              (lambda image: (image[np.newaxis].astype(np.float32) / 127.5 - 1.0)))
  if to_labels:
    logits = interpreter.get_output_details()[0]['index']

    def predict_labels(image):
      interpreter.set_tensor(detail['index'], as_input(image))
      interpreter.invoke()
      return np.argmax(interpreter.get_tensor(logits)[0], axis=-1)
    return predict_labels
  feeds = {id(image): as_input(image) for image in images}

  def predict(image):
    interpreter.set_tensor(detail['index'], feeds[id(image)])
    interpreter.invoke()
  return predict


def _session(graph_def):
  """predict(image) of a frozen GraphDef: run to the labels."""
  from deeplab import inference
  from deeplab.compat import tf
  graph = tf.Graph()
  with graph.as_default():
    tf.compat.v1.import_graph_def(graph_def, name='')
  session = tf.compat.v1.Session(graph=graph)
  inputs = graph.get_tensor_by_name(inference.INPUT_TENSOR + ':0')
  labels = graph.get_tensor_by_name(inference.PREDICTIONS_TENSOR + ':0')
  return lambda image: session.run(labels, {inputs: image[np.newaxis]})


def trace_by_op(graph_def, image, runs=5):
  """{op type: milliseconds per run} of a frozen GraphDef run to the labels in a plain session,
  from TensorFlow's full trace (RunMetadata step stats; the op types as the runtime ran them,
  after Grappler's fusions), largest first."""
  from deeplab import inference
  from deeplab.compat import tf
  graph = tf.Graph()
  with graph.as_default():
    tf.compat.v1.import_graph_def(graph_def, name='')
  options = tf.compat.v1.RunOptions(trace_level=tf.compat.v1.RunOptions.FULL_TRACE)
  feed = {inference.INPUT_TENSOR + ':0': image[np.newaxis]}
  totals = {}
  with tf.compat.v1.Session(graph=graph) as session:
    session.run(inference.PREDICTIONS_TENSOR + ':0', feed)
    for _ in range(runs):
      metadata = tf.compat.v1.RunMetadata()
      session.run(inference.PREDICTIONS_TENSOR + ':0', feed, options=options,
                  run_metadata=metadata)
      for device in metadata.step_stats.dev_stats:
        for node in device.node_stats:
          label = node.timeline_label  # 'name = OpType(inputs)'
          op = label.split(' = ', 1)[1].split('(', 1)[0] if ' = ' in label else node.node_name
          micros = node.op_end_rel_micros - node.op_start_rel_micros
          totals[op] = totals.get(op, 0.0) + micros / 1000 / runs
  return dict(sorted(totals.items(), key=lambda item: -item[1]))


def _contenders(folder, config, prefix, size, args):
  from deeplab import inference
  from deeplab.config import TFLITE_QUANTIZATIONS, ExportConfig
  from deeplab.export import freeze, frozen_graph, rewrites, tflite
  from deeplab.export import saved_model as saved_model_writer
  images = reference_model.photos(size, 4)
  built = freeze.freeze(config, prefix, ExportConfig(), lean=False)
  lean = rewrites.lean_inference_graph(built)
  predictors = {'frozen_as_built': _session(built), 'frozen_lean': _session(lean)}
  frozen_graph_path = os.path.join(folder, f'frozen_{size[0]}.pb')
  frozen_graph.write_frozen_graph(lean, frozen_graph_path)
  predictors['frozen_loaded'] = inference.FrozenGraphPredictor(frozen_graph_path).predict
  saved_model_path = os.path.join(folder, f'saved_model_{size[0]}')
  saved_model_writer.write_saved_model(lean, saved_model_path)
  predictors['saved_model'] = inference.SavedModelPredictor(saved_model_path).predict
  for quantize in TFLITE_QUANTIZATIONS:
    name = 'float' if quantize == 'none' else quantize
    path = os.path.join(folder, f'{name}_{size[0]}.tflite')
    tflite.write_tflite(config, prefix, path, size, quantize, images)
    predictors[f'tflite_{name}'] = _interpreter(path, args.threads, images)
    any_size = os.path.join(folder, f'{name}_any_size.tflite')
    if not os.path.exists(any_size):
      tflite.write_tflite(config, prefix, any_size, None, quantize, images)
    predictors[f'served_{name}'] = inference.load_model(any_size).predict
  google = reference_model.google_tflite()
  if google and tuple(size) == reference_model.GOOGLE_TFLITE_SIZE:
    predictors['google_tflite'] = _interpreter(google, args.threads, images)
    predictors['google_tflite_labels'] = _interpreter(google, args.threads, images, to_labels=True)
  return {name: _timed(predict, images, args.iterations) for name, predict in predictors.items()}


def _lean_graph(config, prefix):
  from deeplab.config import ExportConfig
  from deeplab.export import freeze
  return freeze.freeze(config, prefix, ExportConfig())


def measure(args):
  """One Measurement per size."""
  measurements = []
  with tempfile.TemporaryDirectory() as folder:
    config, prefix = reference_model.write_checkpoint(folder)
    for side in (int(v) for v in args.sizes.split(',')):
      contenders = _contenders(folder, config, prefix, (side, side), args)
      baseline = 'google_tflite_labels' if 'google_tflite' in contenders else 'tflite_float'
      values = harness.interleave(contenders, args.rounds)
      notes = {'load_average': harness.load_average()}
      if side == min(TARGETS):  # where the file itself has a target: where its time goes
        trace = trace_by_op(_lean_graph(config, prefix), reference_model.photos((side, side), 1)[0])
        notes.update({f'trace_ms_{op}': ms for op, ms in list(trace.items())[:TRACED_OPS]})
        notes['trace_ms_all_ops'] = sum(trace.values())
      measurements.append(harness.Measurement(
          f'inference_{side}', 'ms/image', baseline, values, higher_is_better=False,
          target=TARGETS.get(side, '') if reference_model.GOOGLE_TFLITE.exists() else '',
          notes=notes))
  return measurements


def add_arguments(parser):
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--iterations', type=int, default=20)
  parser.add_argument('--sizes', default='257,513')
  parser.add_argument('--threads', type=int, default=os.cpu_count())


if __name__ == '__main__':
  harness.main(__doc__, add_arguments, measure)
