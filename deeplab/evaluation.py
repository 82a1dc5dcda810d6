"""The evaluator: one pass over a split, whole images at their own size (or padded to
eval_crop_size, the original's protocol) -> confusion -> metrics.

It never waits for new checkpoints (unlike the original eval loop): one checkpoint, one pass.
Predictions are made by `model.predict_labels`, the same function the exported graph runs, so the
two agree pixel for pixel.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from typing import Callable, Optional

import numpy as np

from deeplab import input as model_input
from deeplab import checkpoint, metrics, model, visualize
from deeplab.colormaps import colorize
from deeplab.compat import tf
from deeplab.config import EvalConfig, ModelConfig
from deeplab.datasets import tfrecord
from deeplab.datasets.manifest import Manifest
from deeplab.errors import UserError, tf_error_summary

log = logging.getLogger(__name__)

# Examples shown in TensorBoard (image | label | prediction), the first ones of the split.
SUMMARY_IMAGES = 3


def check_labels(label, name, num_classes, ignore_label, split):
  """A label value that is neither a class nor the ignore label is an error naming the example."""
  values = np.unique(label)
  bad = values[(values >= num_classes) & (values != ignore_label)]
  if bad.size:
    raise UserError(f'split {split!r}, example {name!r}: label out of range: values '
                    f'{bad[:5].tolist()} are neither a class (0..{num_classes - 1}) nor the ignore '
                    f'label {ignore_label}')


# Called with each example as it is scored: name, image [H, W, 3] uint8, label and prediction
# [H, W] class ids.
ExampleObserver = Callable[[str, np.ndarray, np.ndarray, np.ndarray], None]


def evaluate(config: ModelConfig, checkpoint_prefix: str, manifest: Manifest,
             eval_config: EvalConfig, summary_dir: Optional[str] = None, global_step: int = 0,
             each_example: Optional[ExampleObserver] = None) -> dict:
  """mIoU, per-class IoU, pixel accuracy and the confusion matrix of `eval_config.eval_split`.

  With `summary_dir`, they are also written there for TensorBoard at `global_step`, with the
  first SUMMARY_IMAGES examples and their predictions (`write_summaries`). `each_example` sees
  every example after it is scored (the report's per-image scores, progress).
  """
  split = eval_config.eval_split
  shards = manifest.verified_shard_paths(split)
  num_classes, ignore_label = config.num_classes, manifest.ignore_label
  confusion = np.zeros((num_classes, num_classes), np.int64)
  count = 0
  samples = []
  with tf.Graph().as_default():
    example = tf.compat.v1.data.make_one_shot_iterator(model_input.eval_dataset(shards)).get_next()
    predictions, _ = model.predict_labels(example['image'][tf.newaxis], config,
                                          eval_config.eval_scales, eval_config.add_flipped_images,
                                          eval_config.eval_crop_size)
    with tf.compat.v1.Session() as session:
      checkpoint.restore(session, tf.compat.v1.train.Saver(), checkpoint_prefix)
      started = time.perf_counter()
      while True:
        try:
          predicted, label, name, image = session.run(
              [predictions, example['label'], example['name'], example['image']])
        except tf.errors.OutOfRangeError:
          break
        except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as e:
          raise UserError(f'split {split!r}: example {count} cannot be decoded '
                          f'({tf_error_summary(e)})') from None
        label = label[:, :, 0]
        if label.shape != predicted.shape[1:]:
          raise UserError(f'split {split!r}, example {name.decode()!r}: its label is '
                          f'{"x".join(map(str, label.shape))} but its image is '
                          f'{"x".join(map(str, predicted.shape[1:]))} (height x width); expected '
                          'the same size')
        check_labels(label, name.decode(), num_classes, ignore_label, split)
        confusion += metrics.confusion_matrix(label, predicted[0], num_classes, ignore_label)
        if summary_dir is not None and len(samples) < SUMMARY_IMAGES:
          samples.append(np.concatenate([image, colorize(label, manifest.colormap),
                                         colorize(predicted[0], manifest.colormap)], axis=1))
        count += 1
        if each_example is not None:
          each_example(name.decode(), image, label, predicted[0])
  if not count:
    raise UserError(f'split {split!r} of {manifest.folder} has no examples')
  result = metrics.summarize(confusion, manifest.class_names)
  result.update(split=split, num_images=count,
                images_per_sec=count / max(time.perf_counter() - started, 1e-9))
  if summary_dir is not None:
    write_summaries(result, samples, summary_dir, global_step)
  return result


def write_summaries(result: dict, samples, summary_dir: str, global_step: int) -> None:
  """A TensorBoard event file in `summary_dir`: scalars eval/miou, eval/pixel_accuracy and
  eval/iou/<class> (classes with an IoU), and images eval/example_<i> from `samples`
  (uint8 [H, 3W, 3]: image | label | prediction, colour-mapped).

  Written here (TFRecord-framed Event protos) rather than by tf.summary.FileWriter, whose
  background thread drops a failed write silently: a full disk must fail the step, not leave a
  truncated event file."""
  summary = tf.compat.v1.Summary
  scalars = {'eval/miou': result['miou'], 'eval/pixel_accuracy': result['pixel_accuracy']}
  scalars.update({f'eval/iou/{name}': iou for name, iou in result['per_class_iou'].items()})
  values = [summary.Value(tag=tag, simple_value=value)
            for tag, value in scalars.items() if value is not None]
  values += [summary.Value(tag=f'eval/example_{i}', image=summary.Image(
      height=sample.shape[0], width=sample.shape[1], colorspace=3,
      encoded_image_string=visualize.png_bytes(sample)))
             for i, sample in enumerate(samples)]
  now = time.time()
  # The file version first, as TensorBoard expects.
  events = [tf.compat.v1.Event(wall_time=now, file_version='brain.Event:2'),
            tf.compat.v1.Event(wall_time=now, step=global_step, summary=summary(value=values))]
  os.makedirs(summary_dir, exist_ok=True)
  # TensorBoard reads files named events.out.tfevents.*; the time and host keep runs apart.
  path = os.path.join(summary_dir, f'events.out.tfevents.{int(now)}.{socket.gethostname()}')
  with open(path, 'wb') as f:
    writer = tfrecord.RecordWriter(f)
    for event in events:
      writer.write(event.SerializeToString())
