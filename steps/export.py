"""export: checkpoint -> model.tar.gz (frozen_inference_graph.pb + model.json)."""
from steps.flags import FLAG, FLOAT, Parameter, Path, StepSpec

SPEC = StepSpec(
    name='export',
    description='Freeze a checkpoint into a graph: ImageTensor:0 -> SemanticPredictions:0, '
                'SemanticProbabilities:0.',
    inputs=(Path('checkpoint', 'checkpoint.tar.gz from train'),),
    outputs=(Path('output', 'the frozen graph + model.json', filename='model.tar.gz'),),
    parameters=(
        Parameter('inference_scales', FLOAT, (1.0,), 'image scales to average predictions over',
                  multiple=True, min=0.01),
        Parameter('add_flipped_images', FLAG, False, 'also average the left-right flipped image'),
    ),
)
