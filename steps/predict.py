"""predict: model + images -> predictions.tar.gz (label PNGs + colour overlays)."""
from steps.flags import FLOAT, Parameter, Path, StepSpec

SPEC = StepSpec(
    name='predict',
    description='Segment images with an exported model: raw label PNGs and colour overlays.',
    inputs=(
        Path('model', 'model.tar.gz from export'),
        Path('images', 'JPEG/PNG images: a folder or an archive'),
    ),
    outputs=(Path('output', 'label PNGs + overlays', filename='predictions.tar.gz'),),
    parameters=(
        Parameter('overlay_alpha', FLOAT, 0.5, 'opacity of the colour mask over the image', min=0, max=1),
    ),
)
