"""evaluate: tfrecords + checkpoint -> metrics.json (mIoU, per-class IoU, pixel accuracy, confusion)."""
from steps.flags import FLAG, FLOAT, STRING, Parameter, Path, StepSpec

SPEC = StepSpec(
    name='evaluate',
    description='Evaluate a checkpoint on a split in one pass over whole images.',
    inputs=(
        Path('tfrecords', 'TFRecords from build_data (or original DeepLab shards + --dataset)'),
        Path('checkpoint', 'checkpoint.tar.gz from train'),
    ),
    outputs=(Path('output', 'metrics JSON', filename='metrics.json'),),
    parameters=(
        Parameter('dataset', STRING, '', 'the dataset name, needed only for TFRecords without dataset.json'),
        Parameter('eval_split', STRING, 'val', 'the split to evaluate'),
        Parameter('eval_scales', FLOAT, (1.0,), 'image scales to average predictions over',
                  multiple=True, min=0.01),
        Parameter('add_flipped_images', FLAG, False, 'also average the left-right flipped image'),
    ),
)
