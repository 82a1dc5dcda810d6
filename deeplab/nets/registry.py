"""The backbones the library builds: one entry each, holding everything the rest needs to know.

A backbone is its network (a builder function and its arg scope, in one module per family), the
end points its decoder reads, the model-zoo settings that `preset` stands for, and whether it takes
a width multiplier (`depth_multiplier`) and multi-grid unit rates. The settings schema
(deeplab/config.py) reads the names, presets and capabilities from here, and the model
(deeplab/model.py) the network: adding a backbone is its module and one `Backbone` line below.

This module imports no TensorFlow (`--help` and the orchestrator generators read it); a network's
module is imported when it is first built.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
from typing import Callable, Dict, Tuple

# A preset value that stands for the dataset's class count (the model zoo's decoder_filters=19 was
# Cityscapes' 19 classes: a decoder whose output is the logits has one channel per class).
NUM_CLASSES = 'num_classes'

# Model-zoo settings (DeepLab's published configurations): what `preset` means, per backbone.
# Atrous rates are given at output stride 16 and scale with it (12/24/36 at 8), as the model zoo's.
# The head options default to DeepLab's; yes/no options are 0/1, as the model zoo writes them.
_HEAD_PRESET = dict(image_pooling_crop_size=(), image_pooling_stride=(1, 1), aspp_convs_filters=256,
                    aspp_with_concat_projection=1, aspp_with_squeeze_and_excitation=0,
                    image_se_uses_qsigmoid=0, decoder_use_sum_merge=0, decoder_filters=256,
                    decoder_output_is_logits=0, multi_grid=(1, 1, 1))
_MOBILENET_V2_PRESET = dict(_HEAD_PRESET, atrous_rates=(), decoder_output_stride=0)
# Only ImageNet checkpoints are published for resnet_v1_{18,50,101} and xception_{41,71}: they take
# the recipe of their family's model-zoo models (DeepLabv3 for ResNets, DeepLabv3+ for Xceptions).
# The model zoo trains the ResNets with multi-grid 1, 2, 4 (block4's unit rates).
_RESNET_PRESET = dict(_HEAD_PRESET, atrous_rates=(6, 12, 18), decoder_output_stride=0,
                      multi_grid=(1, 2, 4))
_XCEPTION_PRESET = dict(_HEAD_PRESET, atrous_rates=(6, 12, 18), decoder_output_stride=4)
# The Cityscapes MobileNetV3 models (model zoo), which also run at output_stride=32: a sigmoid
# gate from strided image pooling multiplies a 128-channel 1x1 branch, and a 1x1 decoder sums it
# with the stride-8 features, each projected to the class count, into the logits.
_MOBILENET_V3_PRESET = dict(
    _HEAD_PRESET, atrous_rates=(), decoder_output_stride=8, image_pooling_crop_size=(769, 769),
    image_pooling_stride=(4, 5), aspp_convs_filters=128, aspp_with_concat_projection=0,
    aspp_with_squeeze_and_excitation=1, image_se_uses_qsigmoid=1, decoder_use_sum_merge=1,
    decoder_filters=NUM_CLASSES, decoder_output_is_logits=1)


@dataclasses.dataclass(frozen=True)
class Backbone:
  """One backbone: `builder(images, depth_multiplier, output_stride, [multi_grid,] **builder_kwargs)
  -> (features, end_points)` under `arg_scope(is_training, weight_decay, batch_norm_decay)`, both
  named `<module>.<function>` in deeplab/nets/; the builder's module has DECODER_END_POINTS."""
  builder: str
  arg_scope: str
  preset: dict
  builder_kwargs: dict = dataclasses.field(default_factory=dict)
  width_multiplier: bool = False  # takes depth_multiplier != 1 (else one published width)
  multi_grid: bool = False  # its builder takes block4's unit rates (else 1, 1, 1 only)

  def network(self, name: str) -> Tuple[Callable, Callable, Dict[int, str]]:
    """(builder, arg scope, {decoder output stride: the end point the decoder reads there})."""
    module = importlib.import_module(f'deeplab.nets.{self.builder.split(".")[0]}')
    return (functools.partial(_function(self.builder), **self.builder_kwargs),
            _function(self.arg_scope), module.DECODER_END_POINTS[name])


def _function(qualified: str) -> Callable:
  module, name = qualified.split('.')
  return getattr(importlib.import_module(f'deeplab.nets.{module}'), name)


def _resnet(variant, preset=_RESNET_PRESET, multi_grid=True):
  return Backbone('resnet_v1_beta.resnet', 'resnet_v1_beta.resnet_v1_beta_arg_scope', preset,
                  dict(variant=variant), multi_grid=multi_grid)


def _xception(scope):
  return Backbone('xception.xception', 'xception.xception_arg_scope', _XCEPTION_PRESET,
                  dict(scope=scope))


def _mobilenet_v3(variant):
  # DeepLab builds MobileNetV3 with MobileNetV2's layer defaults (each layer sets its activation).
  return Backbone('mobilenet_v3.mobilenet_v3', 'mobilenet_v2.mobilenet_v2_arg_scope',
                  _MOBILENET_V3_PRESET, dict(variant=variant), width_multiplier=True)


# Listed only once its network exists; the order is the order `--help` shows.
BACKBONES = {
    'mobilenet_v2': Backbone('mobilenet_v2.mobilenet_v2', 'mobilenet_v2.mobilenet_v2_arg_scope',
                             _MOBILENET_V2_PRESET, width_multiplier=True),
    'mobilenet_v3_large_seg': _mobilenet_v3('mobilenet_v3_large_seg'),
    'mobilenet_v3_small_seg': _mobilenet_v3('mobilenet_v3_small_seg'),
    # ResNet-18's block4 has two units, whose rates its builder fixes at DeepLab's 1, 1.
    'resnet_v1_18': _resnet('resnet_v1_18', dict(_RESNET_PRESET, multi_grid=(1, 1, 1)), False),
    'resnet_v1_50': _resnet('resnet_v1_50'),
    'resnet_v1_101': _resnet('resnet_v1_101'),
    'resnet_v1_50_beta': _resnet('resnet_v1_50_beta'),
    'resnet_v1_101_beta': _resnet('resnet_v1_101_beta'),
    'xception_41': _xception('xception_41'),
    'xception_65': _xception('xception_65'),
    'xception_71': _xception('xception_71'),
}
