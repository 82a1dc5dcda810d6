"""build_data: a raw dataset (folder or archive) -> tfrecords.tar.gz (shards + dataset.json)."""
from steps.flags import FLAG, INTEGER, STRING, Parameter, Path, StepSpec

DATASETS = ('folder', 'pascal_voc_seg', 'ade20k', 'cityscapes')

SPEC = StepSpec(
    name='build_data',
    description='Build TFRecords in the original DeepLab format from a raw dataset layout.',
    inputs=(Path('raw_data', 'the raw dataset: a folder or a .tar/.tar.gz/.zip archive'),),
    outputs=(Path('output', 'TFRecord shards + dataset.json', filename='tfrecords.tar.gz'),),
    parameters=(
        Parameter('dataset', STRING, 'folder', 'the layout of raw_data', choices=DATASETS),
        Parameter('num_shards', INTEGER, 4, 'shards per split', min=1),
        Parameter('num_workers', INTEGER, 0, 'parallel worker processes (0 = one per core)', min=0),
        Parameter('num_classes', INTEGER, 0,
                  'folder layout: number of classes (0 = one more than the largest label found)', min=0),
        Parameter('ignore_label', INTEGER, 255, 'folder layout: the label value that is not a class',
                  min=0, max=255),
        Parameter('class_names', STRING, (), 'folder layout: class names, in class id order',
                  multiple=True),
        Parameter('skip_invalid', FLAG, False,
                  'skip (and report) invalid examples instead of failing'),
    ),
)
