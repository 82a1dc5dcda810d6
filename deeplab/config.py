"""Every setting of the library, one schema (a frozen dataclass) per concern.

    ModelConfig    the network and its preprocessing (travels in model.json)
    TrainConfig    the training run
    EvalConfig     evaluation
    ExportConfig   the exported model (formats, inference graph)
    InferenceConfig  what prediction with an exported model computes (predict and serve)
    PredictConfig  batch prediction (InferenceConfig + which images: shards, mounts)
    ServeConfig    the online endpoint (InferenceConfig + the server)
    BuildConfig    building TFRecords from a raw dataset

Each field is declared with `setting(...)`: its default, help text, bounds and choices. Everything
else is derived from these declarations: the steps' command-line flags (steps/flags.py), the
orchestrators' files (pipelines/), and validation, which happens here once,
when a config is made. The library takes config objects whole. Adding a setting is one field here
plus the code that uses it.

Names follow the original DeepLab flags. The head settings default to the backbone's model-zoo
value, written `preset` (deeplab/nets/registry.py): `atrous_rates`, `decoder_output_stride`, `multi_grid` and the
options of the MobileNetV3 head (image pooling window, ASPP and decoder shapes); `none` says
explicitly "no atrous branches" / "no decoder" / "no multi-grid" (unit rates 1, 1, 1, the
original's default) / "global image pooling". A ModelConfig resolves them when it is made, so a
config (and the model.json written from it) always holds concrete values.
"""
from __future__ import annotations

import dataclasses
import functools
import re
import typing
from typing import Any, Optional, Tuple

from deeplab.errors import UserError
from deeplab.inference import FORMATS
from deeplab.nets import registry
from deeplab.nets.registry import BACKBONES

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


def _check_crop_size(name: str, value: tuple, optional: bool = False) -> None:
  """A crop size is height,width (or, when `optional`, empty)."""
  if len(value) != 2 and not (optional and not value):
    raise UserError(f'--{name}={_show(value)}: expected two integers, height,width (e.g. 513,513)'
                    + (', or nothing' if optional else ''))


# Upper bounds of the values that size memory. Values read from model.json and dataset.json pass
# the same checks as flags, so a file gone wrong (or written to hurt) is one line, not a step that
# runs out of memory or crashes a native library. Each bound is far above what real runs use:
# - classes: 256. TFRecord labels are 8-bit PNGs (class ids 0..255): no dataset has more.
MAX_CLASSES = 256
# - image sides (crop sizes, resize values, the TFLite input): 8192, four times the longest side
#   DeepLab's published configurations use (Cityscapes, 1025x2049) and beyond what one GPU trains
#   at. The TFLite converter takes about 1 GB at 8192x8192 (256 classes too) and dies with SIGSEGV
#   at 1000000x1000000.
MAX_IMAGE_SIDE = 8192
# - the MobileNet width multiplier: 4, nearly three times the widest published MobileNet (1.4).
MAX_DEPTH_MULTIPLIER = 4.0
# - head channels (ASPP, decoder): 4096, sixteen times the published 256.
MAX_HEAD_FILTERS = 4096
# - atrous rates: 128 (published: at most 36, at output stride 8); multi-grid unit rates: 16
#   (published: 1, 2, 4). Each rate pads the feature map it dilates over.
MAX_ATROUS_RATE = 128
MAX_MULTI_GRID = 16
# - image scales (evaluation, export, scale augmentation): 8 (published: at most 2); pixels grow
#   with the square of a scale.
MAX_SCALE = 8.0
# - predict shards: 10000 (ten million images at a thousand per machine); merge_predictions
#   opens every shard artifact at once.
MAX_SHARDS = 10000
# - object-store mounts of a predict run: 16; URL prefixes a mapping may name: scheme://bucket/...
MAX_MOUNTS = 16
MOUNT_PREFIX = re.compile(r'[a-z][a-z0-9+.-]*://[^/=\s]+/([^=\s]*/)?')


# ----------------------------------------------------------------------------- the model

# The backbones, their model-zoo presets and capabilities: one table, deeplab/nets/registry.py.
MODEL_VARIANTS = tuple(BACKBONES)
NUM_CLASSES = registry.NUM_CLASSES
# What NONE means per preset setting.
NONE_VALUES = dict(atrous_rates=(), decoder_output_stride=0, multi_grid=(1, 1, 1))


@dataclasses.dataclass(frozen=True)
class ModelConfig(Settings):
  """The network and its preprocessing: what evaluate and export rebuild from model.json."""
  model_variant: str = setting('mobilenet_v2', 'the backbone', choices=MODEL_VARIANTS)
  num_classes: int = setting(21, 'classes the logits layer predicts (from the dataset)', min=2,
                             max=MAX_CLASSES, flag=False)
  depth_multiplier: float = setting(1.0, 'MobileNet width multiplier', min=0.01,
                                    max=MAX_DEPTH_MULTIPLIER)
  output_stride: int = setting(16, 'input size / feature size (8, 16 or 32)',
                               choices=(8, 16, 32))
  atrous_rates: Tuple[int, ...] = setting(
      PRESET, 'ASPP atrous rates, one 3x3 branch each ("preset" = the model_variant\'s; "none" = '
      'the 1x1 branch only)', min=1, max=MAX_ATROUS_RATE, preset=True)
  decoder_output_stride: int = setting(
      PRESET, 'DeepLabv3+ decoder stride ("preset" = the model_variant\'s: 4 for the Xceptions; '
      '"none" = no decoder)', choices=(0, 4, 8), preset=True)
  multi_grid: Tuple[int, ...] = setting(
      PRESET, 'unit rates of the last block, multiplying its atrous rate ("preset" = the '
      'model_variant\'s: 1,2,4 for the ResNets; "none" = 1,1,1, the original\'s default)', min=1,
      max=MAX_MULTI_GRID, preset=True)
  add_image_level_feature: bool = setting(True, 'add the image pooling branch')
  aspp_with_batch_norm: bool = setting(True, 'batch norm in the ASPP branches', flag=False)
  aspp_with_separable_conv: bool = setting(True, 'separable 3x3 convs in the ASPP branches')
  decoder_use_separable_conv: bool = setting(True, 'separable 3x3 convs in the decoder')
  image_pooling_crop_size: Tuple[int, ...] = setting(
      PRESET, 'image pooling averages windows of this crop\'s feature size, height,width '
      '("none" = the whole feature map)', min=1, max=MAX_IMAGE_SIDE, preset=True)
  image_pooling_stride: Tuple[int, ...] = setting(
      PRESET, 'image pooling window stride, height,width (with image_pooling_crop_size)', min=1,
      max=MAX_IMAGE_SIDE, preset=True)
  aspp_convs_filters: int = setting(PRESET, 'channels of the ASPP branches and projection', min=1,
                                    max=MAX_HEAD_FILTERS, preset=True)
  aspp_with_concat_projection: int = setting(
      PRESET, '1: a 1x1 conv (+ dropout) projects the concatenated ASPP branches', choices=(0, 1),
      preset=True)
  aspp_with_squeeze_and_excitation: int = setting(
      PRESET, '1: the image pooling branch gates the others (sigmoid) instead of joining them',
      choices=(0, 1), preset=True)
  image_se_uses_qsigmoid: int = setting(
      PRESET, '1: that gate is a hard sigmoid, relu6(x + 3) / 6', choices=(0, 1), preset=True)
  decoder_use_sum_merge: int = setting(
      PRESET, '1: the decoder adds the projected low-level features to one conv of the ASPP '
      'output instead of concatenating them', choices=(0, 1), preset=True)
  decoder_filters: int = setting(PRESET, 'channels of the decoder convs', min=1,
                                 max=MAX_HEAD_FILTERS, preset=True)
  decoder_output_is_logits: int = setting(
      PRESET, '1: the decoder\'s 1x1 convs output the logits (decoder_filters = the class count)',
      choices=(0, 1), preset=True)
  batch_norm_epsilon: float = setting(1e-5, 'batch norm epsilon of the head', flag=False)
  dropout_keep_prob: float = setting(0.9, 'dropout after concat_projection, training only',
                                     flag=False)
  min_resize_value: int = setting(0, 'resize images so the short side is at least this (0 = off); '
                                  'applies to train, evaluate and export', min=0,
                                  max=MAX_IMAGE_SIDE)
  max_resize_value: int = setting(0, 'resize images so the long side is at most this (0 = off)',
                                  min=0, max=MAX_IMAGE_SIDE)

  # Keys of model.json files written before weight_decay and batch_norm_decay became training
  # settings (they never changed the graph a checkpoint is restored into).
  RETIRED_KEYS = ('weight_decay', 'batch_norm_decay')

  def __post_init__(self):
    if self.model_variant in BACKBONES:  # an unknown variant is reported by the choices check
      multiple = {info.name for info in settings_of(type(self)) if info.multiple}
      for name, preset in BACKBONES[self.model_variant].preset.items():
        value = getattr(self, name)
        if value == PRESET or value == (PRESET,):
          if name == 'atrous_rates':
            preset = tuple(r * 16 // self.output_stride for r in preset)
          value = self.num_classes if preset == NUM_CLASSES else preset
        elif value == NONE or value == (NONE,):
          value = NONE_VALUES.get(name, () if name in multiple else 0)
        else:  # from the command line, the numbers arrive as text
          value = _numbers(name, value)
        object.__setattr__(self, name, value)
    super().__post_init__()

  def validate(self):
    if len(self.multi_grid) != 3:
      raise UserError(f'--multi_grid={_show(self.multi_grid)}: expected three unit rates (e.g. 1,2,4)')
    backbone = BACKBONES[self.model_variant]  # a known variant: the choices were checked first
    if self.multi_grid != NONE_VALUES['multi_grid'] and not backbone.multi_grid:
      raise UserError(f'--multi_grid={_show(self.multi_grid)}: the {self.model_variant} builder has '
                      'no multi-grid; expected none (1,1,1)')
    if self.depth_multiplier != 1.0 and not backbone.width_multiplier:
      raise UserError(f'--depth_multiplier={self.depth_multiplier}: {self.model_variant} has no '
                      'width multiplier; expected 1')
    if self.max_resize_value and self.min_resize_value > self.max_resize_value:
      raise UserError(f'--min_resize_value={self.min_resize_value} exceeds '
                      f'--max_resize_value={self.max_resize_value}')
    for name, lengths in (('image_pooling_crop_size', (0, 2)), ('image_pooling_stride', (2,))):
      if len(getattr(self, name)) not in lengths:
        raise UserError(f'--{name}={_show(getattr(self, name))}: expected two integers, '
                        'height,width')
    if self.decoder_output_is_logits and not self.decoder_output_stride:
      raise UserError('--decoder_output_is_logits=1 needs a decoder; got '
                      '--decoder_output_stride=none')
    if self.decoder_output_is_logits and self.decoder_filters != self.num_classes:
      raise UserError(f'--decoder_filters={self.decoder_filters}: with '
                      f'--decoder_output_is_logits=1 the decoder outputs the {self.num_classes} '
                      'class scores; expected "preset" or the class count')

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
  train_crop_size: Tuple[int, ...] = setting((513, 513), 'crop height,width', min=1,
                                             max=MAX_IMAGE_SIDE)
  base_learning_rate: float = setting(0.0001, 'initial learning rate', min=0)
  learning_policy: str = setting('poly', 'learning rate schedule', choices=('poly', 'step', 'cosine'))
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
  min_scale_factor: float = setting(0.5, 'random scale augmentation: smallest factor', min=0.01,
                                    max=MAX_SCALE)
  max_scale_factor: float = setting(2.0, 'random scale augmentation: largest factor', min=0.01,
                                    max=MAX_SCALE)
  scale_factor_step_size: float = setting(0.25, 'random scale: step between factors (0 = any)',
                                          min=0)
  initialize_last_layer: bool = setting(True, 'restore the logits layer from tf_initial_checkpoint '
                                        '(false when the class count differs)')
  last_layers_contain_logits_only: bool = setting(False, 'the last layers are the logits only '
                                                  '(else the ASPP/decoder layers too): what '
                                                  'initialize_last_layer=false leaves new and '
                                                  'last_layer_gradient_multiplier multiplies')
  last_layer_gradient_multiplier: float = setting(
      1.0, 'multiply the gradients of the last layers by this; biases get twice their layer\'s '
      'multiplier, as in the original', min=0)
  upsample_logits: bool = setting(True, 'compute the loss at label resolution (logits upsampled); '
                                  'false: at logits resolution (labels downsampled, nearest)')
  top_k_percent_pixels: float = setting(1.0, 'hard pixel mining: the loss counts only this share '
                                        'of the pixels, those with the largest loss', min=0, max=1)
  hard_example_mining_step: int = setting(0, 'hard pixel mining: the share falls linearly from 1 to '
                                          'top_k_percent_pixels over this many steps (0 = at once)',
                                          min=0)
  label_weights: Tuple[float, ...] = setting((), 'loss weight of each class, one per class in '
                                             'class id order (empty = all 1)', min=0)
  label_weight_rule: str = setting('none', 'class weights from the training split\'s label '
                                   'histogram when label_weights is empty: inverse_frequency = '
                                   'mean pixels per class / the class\'s pixels, at most '
                                   'label_weight_cap', choices=('none', 'inverse_frequency'))
  label_weight_cap: float = setting(10.0, 'inverse_frequency: the largest class weight', min=1)
  log_steps: int = setting(10, 'print a metric line every this many steps', min=1)
  save_interval_steps: int = setting(1000, 'save a checkpoint every this many steps', min=1)
  batch_norm_decay: float = setting(0.9997, 'decay of the batch norm moving averages (lower it, '
                                    'e.g. 0.99, for short runs)', min=0, max=1)
  seed: int = setting(0, 'random seed of initialisation and augmentation')
  num_replicas: int = setting(0, 'replicas of the model on this machine: 0 = every visible GPU (one '
                              'CPU device without GPUs); train_batch_size is the global batch, '
                              'split evenly among the replicas of all workers', min=0)
  sync_batch_norm: bool = setting(True, 'with more than one replica: batch norm statistics of the '
                                  'whole global batch (all-reduced), as one device would compute '
                                  'them')
  precision: str = setting('float32', 'compute precision; variables and checkpoints stay float32 '
                           '(float16 trains with dynamic loss scaling)',
                           choices=('float32', 'bfloat16', 'float16'))
  worker_timeout: int = setting(600, 'training on several machines (TF_CONFIG): seconds to wait '
                                'for every worker to start, and for a step to finish on all', min=1)

  # Settings that change neither what is trained nor how: two runs that differ only in these are
  # the same run (they resume each other). A run resumes on another number of replicas too: the
  # global batch, and so the training, stays the same.
  NOT_IN_FINGERPRINT = ('log_steps', 'save_interval_steps', 'num_replicas',
                        'worker_timeout')

  def validate(self):
    _check_crop_size('train_crop_size', self.train_crop_size)
    if self.label_weights and self.label_weight_rule != 'none':
      raise UserError(f'--label_weights and --label_weight_rule={self.label_weight_rule} both give '
                      'class weights; give one')
    if self.min_scale_factor > self.max_scale_factor:
      raise UserError(f'--min_scale_factor={self.min_scale_factor} exceeds '
                      f'--max_scale_factor={self.max_scale_factor}')


# ----------------------------------------------------------------------------- evaluation, export, predict

# The padding protocol of the original eval.py / export_model.py, shared by evaluate and export.
CROP_SIZE_HELP = ('pad each image (after resizing to the model\'s range) with the mean pixel to at '
                  'least height,width before predicting, as the original does (513,513 for the '
                  'published PASCAL numbers, 1025,2049 for Cityscapes); empty = predict the whole '
                  'image as it is')


@dataclasses.dataclass(frozen=True)
class EvalConfig(Settings):
  """One evaluation pass over a split, whole images."""
  eval_split: str = setting('val', 'the split to evaluate (for Cityscapes, val and val_fine name '
                            'the same split)')
  eval_scales: Tuple[float, ...] = setting((1.0,), 'image scales to average predictions over',
                                           min=0.01, max=MAX_SCALE)
  add_flipped_images: bool = setting(False, 'also average the left-right flipped image')
  eval_crop_size: Tuple[int, ...] = setting((), CROP_SIZE_HELP, min=1, max=MAX_IMAGE_SIDE)
  report_images: int = setting(4, 'the evaluation report shows this many images with the lowest '
                               'per-image mIoU and as many with the highest (0 = none)', min=0)
  allow_train_split: bool = setting(False, 'evaluate even when a shard of the split is one the '
                                    'checkpoint was trained on (its model.json says which)')

  def validate(self):
    _check_crop_size('eval_crop_size', self.eval_crop_size, optional=True)


@dataclasses.dataclass(frozen=True)
class GateConfig(Settings):
  """When an evaluated model may be deployed: its mIoU on the evaluation split, alone and against
  the baseline (the model in production) evaluated on the same split in the same run."""
  min_miou: float = setting(
      0.25, 'deploy only a model with at least this mIoU on the evaluation split; the default only '
      'stops a broken training (every model the original DeepLab publishes scores more, the lowest '
      'about 0.32: MobileNetV2 on ADE20K): raise it to what your dataset needs', min=0, max=1)
  max_miou_drop: float = setting(
      0.01, 'when evaluate was given a baseline: deploy only if the mIoU is at most this much below '
      "the baseline's (0.01: one mIoU point, which retraining the same settings can move)",
      min=0, max=1)


# The export formats, in order of preference (deeplab/inference.py FORMATS: the one table of them).
MODEL_FORMATS = tuple(FORMATS)
# TFLite weights: float32 as trained, or full-integer quantisation calibrated on sample images.
TFLITE_QUANTIZATIONS = ('none', 'int8')
# How predict and serve write an overlay (visualize.write_overlay): the picture to look at; the
# class ids themselves are always in the lossless label PNGs.
OVERLAY_FORMATS = ('jpeg', 'png')


@dataclasses.dataclass(frozen=True)
class ExportConfig(Settings):
  """The exported model: its formats and the inference graph they hold."""
  inference_scales: Tuple[float, ...] = setting((1.0,), 'image scales to average predictions over',
                                                min=0.01, max=MAX_SCALE)
  add_flipped_images: bool = setting(False, 'also average the left-right flipped image')
  export_crop_size: Tuple[int, ...] = setting((), CROP_SIZE_HELP, min=1, max=MAX_IMAGE_SIDE)
  export_formats: Tuple[str, ...] = setting(
      MODEL_FORMATS, 'formats to write: frozen_graph (the model-zoo TF1 graph), saved_model (TF '
      'Serving), tflite (phones and edge devices)', choices=MODEL_FORMATS)
  tflite_input_size: Tuple[int, ...] = setting((), 'TFLite fixed input height,width (empty = any '
                                               'size: the input is resized to each image\'s)',
                                               min=1, max=MAX_IMAGE_SIDE)
  tflite_quantize: str = setting('none', 'TFLite weights: none (float32) or int8 (full-integer, '
                                 'calibrated on training images of --tfrecords)',
                                 choices=TFLITE_QUANTIZATIONS)
  calibration_images: int = setting(100, 'int8: training images of --tfrecords to calibrate on',
                                    min=1)
  format_check_images: int = setting(8, 'validation images of --tfrecords on which every format '
                                     'is compared with the frozen graph (pixel agreement, mIoU); '
                                     '0 = no check', min=0)

  def validate(self):
    _check_crop_size('export_crop_size', self.export_crop_size, optional=True)
    if not self.export_formats:
      raise UserError('--export_formats is empty; expected one or more of ' + ', '.join(MODEL_FORMATS))
    _check_crop_size('tflite_input_size', self.tflite_input_size, optional=True)
    if self.tflite_quantize != 'none' and 'tflite' not in self.export_formats:
      raise UserError(f'--tflite_quantize={self.tflite_quantize} needs tflite in --export_formats')


@dataclasses.dataclass(frozen=True)
class InferenceConfig(Settings):
  """Prediction with an exported model, in batch (predict) and online (serve): every field changes
  the outputs, so predict records them all in its manifest."""
  overlay_alpha: float = setting(0.5, 'opacity of the colour mask over the image', min=0, max=1)
  overlay_format: str = setting(
      'jpeg', 'overlay pictures: jpeg (quality 90 with full colour resolution, so class edges do '
      'not bleed; a fifth of the size and a tenth of the time of png) or png (lossless); the label '
      'maps are lossless PNGs either way', choices=OVERLAY_FORMATS)
  max_inference_pixels: int = setting(
      4194304, 'images with more pixels are scaled down to this many for inference, and their '
      'labels scaled back up (nearest), which bounds the memory one large photo takes; 0 = always '
      'full size', min=0)
  model_format: str = setting('auto', 'the format to run when the model holds several (auto: '
                              'tflite if it takes any input size, else frozen_graph, else '
                              'saved_model, else a fixed-size tflite)',
                              choices=('auto',) + MODEL_FORMATS)
  max_image_pixels: int = setting(
      50000000, 'larger images are refused from their header, before they are decoded (serve: '
      '413; predict: an error naming the file), except JPEGs, decoded at 1/2, 1/4 or 1/8 of each '
      'side when that fits (their outputs have that size); the images being decoded, inferred and '
      'encoded at once hold at most this many pixels together, which bounds memory; 0 = no bound',
      min=0)


@dataclasses.dataclass(frozen=True)
class PredictConfig(InferenceConfig):
  """Batch prediction: the inference settings plus which images this run segments."""
  num_shards: int = setting(1, 'split the images into this many shards, one predict run each '
                            '(merge them with merge_predictions); an image\'s shard is the first 8 '
                            'bytes of the sha256 of its name, big-endian, modulo num_shards',
                            min=1, max=MAX_SHARDS)
  shard_index: int = setting(0, 'the shard this run segments, 0 to num_shards - 1', min=0,
                             max=MAX_SHARDS - 1)
  images_mount: Tuple[str, ...] = setting(
      (), 'for --images as a list file: PREFIX=FOLDER maps the object-store URLs starting with '
      'PREFIX (e.g. gs://bucket/) to the folder the orchestrator mounts it at (e.g. /gcs/bucket/); '
      f'at most {MAX_MOUNTS}; a URL no mapping covers is refused, nothing is downloaded')

  def validate(self):
    if self.shard_index >= self.num_shards:
      raise UserError(f'--shard_index={self.shard_index}: expected 0 to {self.num_shards - 1} '
                      f'(--num_shards={self.num_shards})')
    if len(self.images_mount) > MAX_MOUNTS:
      raise UserError(f'--images_mount: {len(self.images_mount)} mappings; at most {MAX_MOUNTS}')
    for mount in self.images_mount:
      prefix, sep, folder = mount.partition('=')
      if not (sep and MOUNT_PREFIX.fullmatch(prefix) and folder):
        raise UserError(f'--images_mount={mount}: expected PREFIX=FOLDER with PREFIX a URL '
                        'prefix such as gs://bucket/ or s3://bucket/photos/ (ending in /)')

  def mounts(self) -> Tuple[Tuple[str, str], ...]:
    """(URL prefix, folder) of each --images_mount, longest prefix first (the most specific wins)."""
    pairs = (mount.partition('=')[::2] for mount in self.images_mount)
    return tuple(sorted(pairs, key=lambda pair: -len(pair[0])))


@dataclasses.dataclass(frozen=True)
class ServeConfig(InferenceConfig):
  """The online endpoint: prediction settings plus the server's."""
  host: str = setting('127.0.0.1', 'address to listen on (0.0.0.0 to accept other machines, as in '
                      'a container)')
  port: int = setting(8000, 'port to listen on (0 = a free one, logged)', min=0, max=65535)
  threads: int = setting(8, 'request threads for POSTs (other requests have their own); '
                         'inference runs one image at a time', min=1)
  max_body_bytes: int = setting(20971520, 'larger request bodies are refused (413)', min=1)
  max_body_seconds: float = setting(60.0, 'a request body must arrive whole within this many '
                                    'seconds (408); until then it holds a socket, not a thread',
                                    min=1)
  max_queue_seconds: float = setting(30.0, 'a request waits at most this long for its image to '
                                     'fit in --max_image_pixels beside the images in progress, '
                                     'then gets 503 with Retry-After', min=0)
  url_prefix: str = setting('', 'a URL path the app is also served under (a proxy mounts it '
                            'there), stripped before routing; empty = none')
  url_prefix_header: str = setting('', 'a request header whose value is a further URL path to '
                                   'strip, per request (e.g. X-Forwarded-Prefix); empty = none')


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
                             'label found)', min=0, max=MAX_CLASSES)
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
