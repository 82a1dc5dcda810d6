"""build_data: a raw dataset (folder or archive) -> tfrecords.tar.gz (shards + dataset.json).

The raw layouts each dataset accepts are described in deeplab/datasets/layouts/. Prints one JSON
metric line: images, images_per_sec, bytes_written (TFRecord bytes), examples_<split> per split,
skipped (a count) and skipped_examples ('<split>/<id>' names).
"""
from deeplab.datasets import layouts
from steps import artifacts
from steps.flags import FLAG, INTEGER, STRING, Parameter, Path, StepSpec, parse_flags

DATASETS = ('folder',) + tuple(name for name in layouts.NAMES if name != 'folder')  # default first

SPEC = StepSpec(
    name='build_data',
    description='Build TFRecords in the original DeepLab format from a raw dataset layout.',
    inputs=(Path('raw_data', 'the raw dataset: a folder or a .tar/.tar.gz/.zip archive'),),
    outputs=(Path('output', 'TFRecord shards + dataset.json', filename='tfrecords.tar.gz'),),
    parameters=(
        Parameter('dataset', STRING, 'folder', 'the layout of raw_data', choices=DATASETS),
        Parameter('splits', STRING, (), 'the splits to build (default: every split found)',
                  multiple=True),
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


def main(argv=None) -> None:
  args = parse_flags(SPEC, argv)
  # Imported after parsing so that --help stays fast (numpy, PIL; never TensorFlow).
  from deeplab.datasets import build
  options = {}
  if args.dataset == 'folder':
    options = dict(num_classes=args.num_classes, ignore_label=args.ignore_label,
                   class_names=args.class_names)
  dataset = layouts.get(args.dataset, **options)
  raw_data = artifacts.input_location('build_data', 'raw_data', args.raw_data)
  out_path = artifacts.output_location('build_data', 'output', args.output, 'tfrecords.tar.gz',
                                      {'raw_data': raw_data})
  with artifacts.open_input(raw_data) as raw_root, artifacts.scratch_dir('tfrecords') as staging:
    _, stats = build.build(dataset, raw_root, staging, splits=args.splits,
                           num_shards=args.num_shards, num_workers=args.num_workers,
                           skip_invalid=args.skip_invalid)
    artifacts.write_tarball(staging, out_path)
  artifacts.log.info('wrote %s: %d examples', out_path, stats.images)
  artifacts.emit_metrics(
      images=stats.images, images_per_sec=round(stats.images_per_sec, 2),
      bytes_written=stats.bytes_written,
      **{f'examples_{split}': count for split, count in stats.split_counts.items()},
      skipped=len(stats.skipped),
      skipped_examples=[f'{s["split"]}/{s["id"]}' for s in stats.skipped])


if __name__ == '__main__':
  artifacts.run_step(main)
