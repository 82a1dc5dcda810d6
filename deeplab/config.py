"""ModelConfig: every option that decides the network's graph and preprocessing.

A trained checkpoint carries its ModelConfig in `model.json`, so evaluate and export rebuild exactly
the trained network without the user repeating `model_variant`, `output_stride`, `atrous_rates`,
`decoder_output_stride` or `num_classes` (the original DeepLab's most reported export failure).

Presets hold the model-zoo settings per backbone; a flag the user gives overrides its preset value.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Optional, Tuple

from deeplab.errors import UserError

# Backbones this library builds. A variant is listed only once its network exists.
MODEL_VARIANTS = ('mobilenet_v2', 'resnet_v1_50_beta', 'resnet_v1_101_beta', 'xception_65')
# Backbones with a width multiplier; the others have one published width (depth_multiplier 1).
WIDTH_MULTIPLIED_VARIANTS = ('mobilenet_v2',)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Options of one DeepLab network (names follow the original DeepLab flags)."""
  model_variant: str = 'mobilenet_v2'
  num_classes: int = 21
  # Backbone.
  depth_multiplier: float = 1.0  # MobileNetV2 width multiplier; 1 for the other backbones
  output_stride: int = 16  # input size / feature size; 8, 16 or 32 (atrous convolution below 32)
  # ASPP head (DeepLabv3).
  atrous_rates: Tuple[int, ...] = ()  # one 3x3 atrous branch `aspp{i}` per rate; () = 1x1 branch only
  add_image_level_feature: bool = True  # the `image_pooling` branch
  aspp_with_batch_norm: bool = True
  aspp_with_separable_conv: bool = True
  # Decoder (DeepLabv3+); 0 = no decoder.
  decoder_output_stride: int = 0
  decoder_use_separable_conv: bool = True
  # Regularisation and batch norm of the layers the head adds.
  weight_decay: float = 4e-5
  batch_norm_decay: float = 0.9997
  batch_norm_epsilon: float = 1e-5
  dropout_keep_prob: float = 0.9  # after `concat_projection`, training only
  # Preprocessing shared by train, evaluate and export: images are resized so that the short side is
  # at least min_resize_value and the long side at most max_resize_value (0 = no resizing).
  min_resize_value: int = 0
  max_resize_value: int = 0

  def __post_init__(self):
    if self.model_variant not in MODEL_VARIANTS:
      raise UserError(f'--model_variant={self.model_variant}: unknown model variant; expected one of '
                      f'{", ".join(MODEL_VARIANTS)}')
    if self.output_stride not in (8, 16, 32):
      raise UserError(f'--output_stride={self.output_stride}: expected 8, 16 or 32')
    if self.decoder_output_stride and self.decoder_output_stride != 4:
      raise UserError(f'--decoder_output_stride={self.decoder_output_stride}: the decoder reads the '
                      'stride-4 features; expected 4 or 0 (no decoder)')
    if self.num_classes < 2:
      raise UserError(f'num_classes={self.num_classes}: expected at least 2 classes')
    if self.depth_multiplier <= 0:
      raise UserError(f'--depth_multiplier={self.depth_multiplier}: expected a positive number')
    if self.depth_multiplier != 1.0 and self.model_variant not in WIDTH_MULTIPLIED_VARIANTS:
      raise UserError(f'--depth_multiplier={self.depth_multiplier}: {self.model_variant} has no '
                      'width multiplier; expected 1')
    if any(r < 1 for r in self.atrous_rates):
      raise UserError(f'--atrous_rates={",".join(map(str, self.atrous_rates))}: expected positive rates')
    if self.max_resize_value and self.min_resize_value > self.max_resize_value:
      raise UserError(f'--min_resize_value={self.min_resize_value} exceeds '
                      f'--max_resize_value={self.max_resize_value}')
    object.__setattr__(self, 'atrous_rates', tuple(int(r) for r in self.atrous_rates))

  def replace(self, **changes) -> 'ModelConfig':
    return dataclasses.replace(self, **changes)

  def to_json(self) -> dict:
    data = dataclasses.asdict(self)
    data['atrous_rates'] = list(self.atrous_rates)
    return data

  @classmethod
  def from_json(cls, data: dict) -> 'ModelConfig':
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
      raise UserError(f'model config has unknown keys {unknown}; was it written by a newer version?')
    values = dict(data)
    if 'atrous_rates' in values:
      values['atrous_rates'] = tuple(values['atrous_rates'])
    return cls(**values)

  def dumps(self) -> str:
    return json.dumps(self.to_json(), sort_keys=True)


# Model-zoo settings per backbone (DeepLab's published configurations). `atrous_rates` for a preset
# are given at output stride 16; at output stride 8 they double (as the model zoo does).
# The ResNets' multi-grid (block4 unit rates 1, 2, 4) is part of the network, not an option here;
# they get no decoder unless asked for (--decoder_output_stride=4). Xception-65 is the DeepLabv3+
# model-zoo setting, with the stride-4 decoder.
PRESETS = {
    'mobilenet_v2': dict(atrous_rates=(), decoder_output_stride=0, output_stride=16),
    'resnet_v1_50_beta': dict(atrous_rates=(6, 12, 18), decoder_output_stride=0, output_stride=16),
    'resnet_v1_101_beta': dict(atrous_rates=(6, 12, 18), decoder_output_stride=0, output_stride=16),
    'xception_65': dict(atrous_rates=(6, 12, 18), decoder_output_stride=4, output_stride=16),
}


def preset_config(model_variant: str, output_stride: Optional[int] = None, **overrides) -> ModelConfig:
  """The model-zoo ModelConfig of `model_variant`, with `overrides` (None values are ignored)."""
  if model_variant not in PRESETS:
    raise UserError(f'--model_variant={model_variant}: unknown model variant; expected one of '
                    f'{", ".join(sorted(PRESETS))}')
  values = dict(PRESETS[model_variant])
  os_value = output_stride or values['output_stride']
  if 'atrous_rates' not in overrides or overrides['atrous_rates'] is None:
    values['atrous_rates'] = tuple(r * 16 // os_value for r in values['atrous_rates'])
  values['output_stride'] = os_value
  values.update({k: v for k, v in overrides.items() if v is not None})
  return ModelConfig(model_variant=model_variant, **values)
