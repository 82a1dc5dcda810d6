"""The backbone registry: one entry per backbone, complete and consistent with the settings schema."""
import pytest

from deeplab.config import MODEL_VARIANTS, ModelConfig, settings_of
from deeplab.nets.registry import BACKBONES, NUM_CLASSES

PRESET_SETTINGS = {info.name for info in settings_of(ModelConfig) if info.preset}


def test_the_schema_offers_exactly_the_registered_backbones():
  assert MODEL_VARIANTS == tuple(BACKBONES)


@pytest.mark.parametrize('variant', sorted(BACKBONES))
def test_each_backbone_presets_every_preset_setting_with_a_value_the_schema_accepts(variant):
  preset = BACKBONES[variant].preset
  assert set(preset) == PRESET_SETTINGS
  config = ModelConfig(model_variant=variant, num_classes=5)
  for name, value in preset.items():
    expected = 5 if value == NUM_CLASSES else value
    assert getattr(config, name) == expected, name


@pytest.mark.parametrize('variant', sorted(BACKBONES))
def test_each_backbone_names_a_network_its_module_has(variant):
  builder, arg_scope, end_points = BACKBONES[variant].network(variant)
  assert callable(builder) and callable(arg_scope)
  assert set(end_points) == {4, 8}  # the decoder strides the schema allows (besides none)


def test_capabilities_are_what_the_schema_enforces():
  for variant, backbone in BACKBONES.items():
    if not backbone.width_multiplier:
      with pytest.raises(Exception, match='has no width multiplier'):
        ModelConfig(model_variant=variant, depth_multiplier=0.5)
    if not backbone.multi_grid:
      with pytest.raises(Exception, match='has no multi-grid'):
        ModelConfig(model_variant=variant, multi_grid=(1, 2, 4))
