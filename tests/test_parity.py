"""Parity with the original DeepLab (tensorflow/models research/deeplab): each option computes what
the original computes, checked against values worked out here by hand or in numpy."""
import math
import os

import numpy as np
import pytest

from deeplab import losses, model, schedules, training
from deeplab.compat import tf
from deeplab.config import BuildConfig, EvalConfig, ExportConfig, ModelConfig, TrainConfig
from deeplab.datasets import build, layouts, synthetic
from deeplab.datasets.manifest import Manifest, SplitInfo
from deeplab.errors import UserError


def run(tensor, feed=None):
  with tf.compat.v1.Session() as session:
    session.run(tf.compat.v1.global_variables_initializer())
    return session.run(tensor, feed)


# ----------------------------------------------------------------------------- Cityscapes splits

def test_cityscapes_shards_carry_the_original_split_names(tmp_path):
  raw = synthetic.write_dataset('cityscapes', str(tmp_path / 'raw'), seed=1, num_train=2,
                                num_val=2, image_size=(24, 32))
  (tmp_path / 'out').mkdir()
  built, _ = build.build(layouts.get('cityscapes'), raw, str(tmp_path / 'out'),
                         BuildConfig(num_shards=1, num_workers=1), progress=False)
  assert sorted(built.splits) == ['train_fine', 'val_fine']
  assert sorted(os.listdir(tmp_path / 'out')) == [
      'dataset.json', 'train_fine-00000-of-00001.tfrecord', 'val_fine-00000-of-00001.tfrecord']
  # The name the original's commands use and the folder name both find the split.
  assert built.shard_paths('val') == built.shard_paths('val_fine')
  assert built.label_histogram('train') == built.splits['train_fine'].label_histogram


def test_shards_built_under_folder_names_are_found_by_the_original_names():
  manifest = Manifest('cityscapes', 19, 255, [], [], folder='/data', splits={
      'val': SplitInfo(1, [{'file': 'val-00000-of-00001.tfrecord'}])})
  assert manifest.shard_paths('val_fine') == ['/data/val-00000-of-00001.tfrecord']
  with pytest.raises(UserError, match="split 'test_fine' is not in the dataset"):
    manifest.shard_paths('test_fine')


# ----------------------------------------------------------------------------- multi-grid

def test_multi_grid_preset_none_and_numbers():
  assert ModelConfig(model_variant='resnet_v1_101_beta').multi_grid == (1, 2, 4)
  assert ModelConfig(model_variant='resnet_v1_101_beta', multi_grid='none').multi_grid == (1, 1, 1)
  assert ModelConfig(model_variant='resnet_v1_50_beta',
                     multi_grid=('1', '2', '1')).multi_grid == (1, 2, 1)
  assert ModelConfig(model_variant='xception_65').multi_grid == (1, 1, 1)
  # A model.json written before the setting existed rebuilds the network it was trained as.
  old = ModelConfig(model_variant='resnet_v1_50_beta').to_json()
  del old['multi_grid']
  assert ModelConfig.from_json(old).multi_grid == (1, 2, 4)
  with pytest.raises(UserError, match='xception_65 builder has no multi-grid'):
    ModelConfig(model_variant='xception_65', multi_grid=(1, 2, 4))
  with pytest.raises(UserError, match='expected three unit rates'):
    ModelConfig(model_variant='resnet_v1_50_beta', multi_grid=(1, 2))


def test_multi_grid_reaches_the_resnet_builder(monkeypatch):
  received = {}
  backbone, arg_scope, end_point = model._BACKBONES['resnet_v1_50_beta']

  def recording(images, **kwargs):
    received.update(kwargs)
    return backbone(images, **kwargs)

  monkeypatch.setitem(model._BACKBONES, 'resnet_v1_50_beta', (recording, arg_scope, end_point))
  with tf.Graph().as_default():
    model.logits(tf.zeros([1, 33, 33, 3]),
                 ModelConfig(model_variant='resnet_v1_50_beta', multi_grid='none'))
  assert received['multi_grid'] == (1, 1, 1)


