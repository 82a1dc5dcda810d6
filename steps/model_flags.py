"""Flags that define the network, shared by train (which records them in model.json) and nothing
else: evaluate and export read them back from the checkpoint's model.json."""
from steps.flags import FLAG, FLOAT, INTEGER, STRING, Parameter

from deeplab.config import MODEL_VARIANTS

MODEL_PARAMETERS = (
    Parameter('model_variant', STRING, 'mobilenet_v2', 'the backbone', choices=MODEL_VARIANTS),
    Parameter('depth_multiplier', FLOAT, 1.0, 'MobileNetV2 width multiplier', min=0.01),
    Parameter('output_stride', INTEGER, 16, 'input size / feature size (8, 16 or 32)',
              choices=(8, 16, 32)),
    Parameter('atrous_rates', INTEGER, (),
              'ASPP atrous rates (none = the preset of model_variant; "0" = no atrous branches)',
              multiple=True, min=0),
    Parameter('decoder_output_stride', INTEGER, 0, 'DeepLabv3+ decoder stride (4), 0 = no decoder',
              choices=(0, 4)),
    Parameter('add_image_level_feature', FLAG, True, 'add the image pooling branch'),
    Parameter('aspp_with_separable_conv', FLAG, True, 'separable 3x3 convs in the ASPP branches'),
    Parameter('decoder_use_separable_conv', FLAG, True, 'separable 3x3 convs in the decoder'),
    Parameter('min_resize_value', INTEGER, 0, 'resize images so the short side is at least this '
              '(0 = off); applies to train, evaluate and export', min=0),
    Parameter('max_resize_value', INTEGER, 0, 'resize images so the long side is at most this '
              '(0 = off)', min=0),
)


def model_config_from_flags(args, num_classes: int, **extra):
  """The ModelConfig the flags ask for: the variant's preset, overridden by the given flags."""
  from deeplab.config import preset_config
  rates = args.atrous_rates
  if rates == (0,):  # "0": explicitly no atrous branches
    rates = ()
  elif rates == ():  # not given: the preset's rates
    rates = None
  return preset_config(
      args.model_variant, output_stride=args.output_stride, num_classes=num_classes,
      depth_multiplier=args.depth_multiplier, atrous_rates=rates,
      decoder_output_stride=args.decoder_output_stride,
      add_image_level_feature=args.add_image_level_feature,
      aspp_with_separable_conv=args.aspp_with_separable_conv,
      decoder_use_separable_conv=args.decoder_use_separable_conv,
      min_resize_value=args.min_resize_value, max_resize_value=args.max_resize_value, **extra)
