"""Every setting of the library, one schema (a frozen dataclass) per concern.

    ModelConfig    the network and its preprocessing (travels in model.json)
    TrainConfig    the training run
    EvalConfig     evaluation
    ExportConfig   the exported inference graph
    PredictConfig  batch prediction
    BuildConfig    building TFRecords from a raw dataset

Each field is declared with `setting(...)`: its default, help text, bounds and choices. Everything
else is derived from these declarations: the steps' command-line flags (steps/flags.py), valohai.yaml,
params.yaml and the Kubeflow component inputs (pipelines/), and validation, which happens here once,
when a config is made. The library takes config objects whole. Adding a setting is one field here
plus the code that uses it.

Names follow the original DeepLab flags. Two model settings default to the backbone's model-zoo
value, written `preset`: `atrous_rates` and `decoder_output_stride`; `none` says explicitly "no
atrous branches" / "no decoder". A ModelConfig resolves them when it is made, so a config (and the
model.json written from it) always holds concrete values.
"""
from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Any, Optional, Tuple

from deeplab.errors import UserError

PRESET = 'preset'
NONE = 'none'


def setting(default, help: str, *, choices=(), min=None, max=None, flag: bool = True,
            preset: bool = False):
  """A schema field. `flag=False` keeps it off the command line (a fixed constant of the network);
  `preset=True` lets it take PRESET (the model variant's value) and NONE."""
  return dataclasses.field(default=default, metadata={
      'help': help, 'choices': tuple(choices), 'min': min, 'max': max, 'flag': flag,
      'preset': preset})


@dataclasses.dataclass(frozen=True)
class SettingInfo:
  """One schema field, as flags and orchestrator files see it."""
  name: str
  kind: type  # int, float, str or bool: the type of the value, or of each item when `multiple`
  multiple: bool
  default: Any
  help: str
  choices: tuple
  min: Optional[float]
  max: Optional[float]
  flag: bool
  preset: bool

  def check(self, value) -> None:
    for item in (value if self.multiple else (value,)):
      check_bounds(item, self.min, self.max, self.choices)


def check_bounds(item, min=None, max=None, choices=()) -> None:
  """Raises ValueError (saying what was expected) for a value out of bounds or choices."""
  if min is not None and item < min:
    raise ValueError(f'must be >= {min}, got {item}')
  if max is not None and item > max:
    raise ValueError(f'must be <= {max}, got {item}')
  if choices and item not in choices:
    raise ValueError(f'expected one of {", ".join(map(str, choices))}, got {item!r}')


@functools.lru_cache(maxsize=None)
def settings_of(schema: type) -> Tuple[SettingInfo, ...]:
  """The fields of a schema class, in declaration order."""
  hints = typing.get_type_hints(schema)
  infos = []
  for field in dataclasses.fields(schema):
    hint = hints[field.name]
    multiple = typing.get_origin(hint) is tuple
    kind = typing.get_args(hint)[0] if multiple else hint
    meta = field.metadata
    infos.append(SettingInfo(field.name, kind, multiple, field.default, meta['help'],
                             meta['choices'], meta['min'], meta['max'], meta['flag'],
                             meta['preset']))
  return tuple(infos)


def _typed(info: SettingInfo, value):
  """`value` as the field's type (lists become tuples, ints in float fields floats)."""
  if info.multiple:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
      raise ValueError(f'expected a list of {info.kind.__name__}, got {value!r}')
    return tuple(_typed_item(info, item) for item in value)
  return _typed_item(info, value)


def _typed_item(info: SettingInfo, item):
  if info.kind is float and isinstance(item, int) and not isinstance(item, bool):
    return float(item)
  if not isinstance(item, info.kind) or (info.kind is int and isinstance(item, bool)):
    raise ValueError(f'expected {info.kind.__name__}, got {item!r}')
  return item


def _numbers(name: str, value):
  """Integers given as text (one, or a tuple), as a preset field's flag delivers them."""
  try:
    if isinstance(value, str):
      return int(value)
    if isinstance(value, tuple):
      return tuple(int(item) if isinstance(item, str) else item for item in value)
  except ValueError:
    raise UserError(f'--{name}={_show(value)}: expected {PRESET!r}, {NONE!r} or integers') from None
  return value


def _show(value) -> str:
  return ','.join(map(str, value)) if isinstance(value, tuple) else str(value)


class Settings:
  """Base of the schemas: validation from the field declarations, and JSON round trips."""

  def __post_init__(self):
    for info in settings_of(type(self)):
      value = getattr(self, info.name)
      try:
        value = _typed(info, value)
        info.check(value)
      except ValueError as e:
        unknown = 'unknown ' + info.name.replace('_', ' ') + '; ' if 'one of' in str(e) else ''
        raise UserError(f'--{info.name}={_show(value)}: {unknown}{e}') from None
      object.__setattr__(self, info.name, value)
    self.validate()

  def validate(self) -> None:
    """Checks between fields; a schema overrides it."""

  def to_json(self) -> dict:
    return {info.name: list(getattr(self, info.name)) if info.multiple else getattr(self, info.name)
            for info in settings_of(type(self))}

  @classmethod
  def from_json(cls, data: dict, retired: Tuple[str, ...] = ()):
    """A config from `to_json` output; `retired` names keys older versions wrote (ignored)."""
    known = {info.name for info in settings_of(cls)}
    unknown = sorted(set(data) - known - set(retired))
    if unknown:
      raise UserError(f'{cls.__name__} has unknown keys {unknown}; was it written by a newer version?')
    return cls(**{k: v for k, v in data.items() if k in known})

  @classmethod
  def from_flags(cls, args, **values):
    """A config from parsed step flags (every flag field), with `values` for the others."""
    return cls(**{info.name: getattr(args, info.name) for info in settings_of(cls) if info.flag},
               **values)


# ----------------------------------------------------------------------------- the model

# Backbones this library builds. A variant is listed only once its network exists.
MODEL_VARIANTS = ('mobilenet_v2', 'resnet_v1_50_beta', 'resnet_v1_101_beta', 'xception_65')
# Backbones with a width multiplier; the others have one published width (depth_multiplier 1).
WIDTH_MULTIPLIED_VARIANTS = ('mobilenet_v2',)

# Model-zoo settings per backbone (DeepLab's published configurations): what PRESET means.
# Atrous rates are given at output stride 16 and scale with it (12/24/36 at 8), as the model zoo's.
# The ResNets' multi-grid (block4 unit rates 1, 2, 4) is part of the network, not a setting here.
PRESETS = {
    'mobilenet_v2': dict(atrous_rates=(), decoder_output_stride=0),
    'resnet_v1_50_beta': dict(atrous_rates=(6, 12, 18), decoder_output_stride=0),
    'resnet_v1_101_beta': dict(atrous_rates=(6, 12, 18), decoder_output_stride=0),
    'xception_65': dict(atrous_rates=(6, 12, 18), decoder_output_stride=4),
}


@dataclasses.dataclass(frozen=True)
class ModelConfig(Settings):
  """The network and its preprocessing: what evaluate and export rebuild from model.json."""
  model_variant: str = setting('mobilenet_v2', 'the backbone', choices=MODEL_VARIANTS)
  num_classes: int = setting(21, 'classes the logits layer predicts (from the dataset)', min=2,
                             flag=False)
  depth_multiplier: float = setting(1.0, 'MobileNetV2 width multiplier', min=0.01)
  output_stride: int = setting(16, 'input size / feature size (8, 16 or 32)',
                               choices=(8, 16, 32))
  atrous_rates: Tuple[int, ...] = setting(
      PRESET, 'ASPP atrous rates, one 3x3 branch each ("preset" = the model_variant\'s; "none" = '
      'the 1x1 branch only)', min=1, preset=True)
  decoder_output_stride: int = setting(
      PRESET, 'DeepLabv3+ decoder stride ("preset" = the model_variant\'s: 4 for xception_65; '
      '"none" = no decoder)', choices=(0, 4), preset=True)
  add_image_level_feature: bool = setting(True, 'add the image pooling branch')
  aspp_with_batch_norm: bool = setting(True, 'batch norm in the ASPP branches', flag=False)
  aspp_with_separable_conv: bool = setting(True, 'separable 3x3 convs in the ASPP branches')
  decoder_use_separable_conv: bool = setting(True, 'separable 3x3 convs in the decoder')
  batch_norm_epsilon: float = setting(1e-5, 'batch norm epsilon of the head', flag=False)
  dropout_keep_prob: float = setting(0.9, 'dropout after concat_projection, training only',
                                     flag=False)
  min_resize_value: int = setting(0, 'resize images so the short side is at least this (0 = off); '
                                  'applies to train, evaluate and export', min=0)
  max_resize_value: int = setting(0, 'resize images so the long side is at most this (0 = off)',
                                  min=0)

  # Keys of model.json files written before weight_decay and batch_norm_decay became training
  # settings (they never changed the graph a checkpoint is restored into).
  RETIRED_KEYS = ('weight_decay', 'batch_norm_decay')

  def __post_init__(self):
    if self.model_variant in PRESETS:  # an unknown variant is reported by the choices check
      for name, preset in PRESETS[self.model_variant].items():
        value = getattr(self, name)
        if value == PRESET or value == (PRESET,):
          if name == 'atrous_rates':
            preset = tuple(r * 16 // self.output_stride for r in preset)
          value = preset
        elif value == NONE or value == (NONE,):
          value = () if name == 'atrous_rates' else 0
        else:  # from the command line, the numbers arrive as text
          value = _numbers(name, value)
        object.__setattr__(self, name, value)
    super().__post_init__()

  def validate(self):
    if self.depth_multiplier != 1.0 and self.model_variant not in WIDTH_MULTIPLIED_VARIANTS:
      raise UserError(f'--depth_multiplier={self.depth_multiplier}: {self.model_variant} has no '
                      'width multiplier; expected 1')
    if self.max_resize_value and self.min_resize_value > self.max_resize_value:
      raise UserError(f'--min_resize_value={self.min_resize_value} exceeds '
                      f'--max_resize_value={self.max_resize_value}')

  @classmethod
  def from_json(cls, data: dict, retired: Tuple[str, ...] = RETIRED_KEYS) -> 'ModelConfig':
    return super().from_json(data, retired)


# ----------------------------------------------------------------------------- training

@dataclasses.dataclass(frozen=True)
class TrainConfig(Settings):
  """A training run (names follow the original DeepLab train.py flags)."""
  train_split: str = setting('train', 'the split to train on')
  training_number_of_steps: int = setting(
      30000, 'total training steps (a resumed run continues to this total); 0 with '
      'tf_initial_checkpoint packages that checkpoint', min=0)
  train_batch_size: int = setting(8, 'images per step', min=1)
  train_crop_size: Tuple[int, ...] = setting((513, 513), 'crop height,width', min=1)
  base_learning_rate: float = setting(0.0001, 'initial learning rate', min=0)
  learning_policy: str = setting('poly', 'learning rate schedule', choices=('poly', 'step'))
  learning_power: float = setting(0.9, 'poly: power')
  end_learning_rate: float = setting(0.0, 'poly: final learning rate', min=0)
  learning_rate_decay_step: int = setting(2000, 'step: decay every this many steps', min=1)
  learning_rate_decay_factor: float = setting(0.1, 'step: decay factor', min=0)
  slow_start_step: int = setting(0, 'warm-up steps at slow_start_learning_rate', min=0)
  slow_start_learning_rate: float = setting(0.0001, 'learning rate during warm-up', min=0)
  momentum: float = setting(0.9, 'momentum of the optimizer', min=0)
  weight_decay: float = setting(0.00004, 'L2 weight decay', min=0)
  fine_tune_batch_norm: bool = setting(True, 'update batch norm statistics and parameters (needs '
                                       'a batch of about 12 or more)')
  min_scale_factor: float = setting(0.5, 'random scale augmentation: smallest factor', min=0.01)
  max_scale_factor: float = setting(2.0, 'random scale augmentation: largest factor', min=0.01)
  scale_factor_step_size: float = setting(0.25, 'random scale: step between factors (0 = any)',
                                          min=0)
  initialize_last_layer: bool = setting(True, 'restore the logits layer from tf_initial_checkpoint '
                                        '(false when the class count differs)')
  last_layers_contain_logits_only: bool = setting(False, 'with initialize_last_layer=false: only '
                                                  'logits are new (else the ASPP/decoder layers are '
                                                  'new too)')
  log_steps: int = setting(10, 'print a metric line every this many steps', min=1)
  save_interval_steps: int = setting(1000, 'save a checkpoint every this many steps', min=1)
  batch_norm_decay: float = setting(0.9997, 'decay of the batch norm moving averages (lower it, '
                                    'e.g. 0.99, for short runs)', min=0, max=1)
  seed: int = setting(0, 'random seed of initialisation and augmentation')

  # Settings that change neither what is trained nor how: two runs that differ only in these are
  # the same run (they resume each other).
  NOT_IN_FINGERPRINT = ('log_steps', 'save_interval_steps')

  def validate(self):
    if len(self.train_crop_size) != 2:
      raise UserError(f'--train_crop_size={_show(self.train_crop_size)}: expected two integers, '
                      'height,width (e.g. 513,513)')
    if self.min_scale_factor > self.max_scale_factor:
      raise UserError(f'--min_scale_factor={self.min_scale_factor} exceeds '
                      f'--max_scale_factor={self.max_scale_factor}')


# ----------------------------------------------------------------------------- evaluation, export, predict

@dataclasses.dataclass(frozen=True)
class EvalConfig(Settings):
  """One evaluation pass over a split, whole images."""
  eval_split: str = setting('val', 'the split to evaluate')
  eval_scales: Tuple[float, ...] = setting((1.0,), 'image scales to average predictions over',
                                           min=0.01)
  add_flipped_images: bool = setting(False, 'also average the left-right flipped image')
  report_images: int = setting(4, 'the evaluation report shows this many images with the lowest '
                               'per-image mIoU and as many with the highest (0 = none)', min=0)


@dataclasses.dataclass(frozen=True)
class ExportConfig(Settings):
  """The exported inference graph."""
  inference_scales: Tuple[float, ...] = setting((1.0,), 'image scales to average predictions over',
                                                min=0.01)
  add_flipped_images: bool = setting(False, 'also average the left-right flipped image')


@dataclasses.dataclass(frozen=True)
class PredictConfig(Settings):
  """Batch prediction with an exported model."""
  overlay_alpha: float = setting(0.5, 'opacity of the colour mask over the image', min=0, max=1)
  max_inference_pixels: int = setting(
      4194304, 'images with more pixels are scaled down to this many for inference, and their '
      'labels scaled back up (nearest), which bounds the memory one large photo takes; 0 = always '
      'full size', min=0)


# ----------------------------------------------------------------------------- dataset build

def _dataset_names():
  from deeplab.datasets import layouts
  return ('folder',) + tuple(name for name in layouts.NAMES if name != 'folder')  # default first


@dataclasses.dataclass(frozen=True)
class BuildConfig(Settings):
  """Building TFRecords from a raw dataset layout."""
  dataset: str = setting('folder', 'the layout of raw_data', choices=_dataset_names())
  splits: Tuple[str, ...] = setting((), 'the splits to build (default: every split found)')
  num_shards: int = setting(4, 'shards per split', min=1)
  num_workers: int = setting(0, 'parallel worker processes (0 = one per core)', min=0)
  num_classes: int = setting(0, 'folder layout: number of classes (0 = one more than the largest '
                             'label found)', min=0)
  ignore_label: int = setting(255, 'folder layout: the label value that is not a class', min=0,
                              max=255)
  class_names: Tuple[str, ...] = setting((), 'folder layout: class names, in class id order')
  skip_invalid: bool = setting(False, 'skip (and report) invalid examples instead of failing')

  def layout_options(self) -> dict:
    """The options the dataset layout takes (only the folder layout has free classes)."""
    if self.dataset != 'folder':
      return {}
    return dict(num_classes=self.num_classes, ignore_label=self.ignore_label,
                class_names=self.class_names)
