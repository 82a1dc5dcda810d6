"""build_data: a raw dataset (folder or archive) -> tfrecords.tar.gz (shards + dataset.json).

The raw layouts each dataset accepts are described in deeplab/datasets/layouts/. Prints one JSON
metric line: images, images_per_sec, bytes_written (TFRecord bytes), examples_<split> per split,
skipped (a count) and skipped_examples ('<split>/<id>' names).
"""
import contextlib

from deeplab.config import BuildConfig
from deeplab.datasets import layouts
from steps import archives, artifacts, locations, runtime
from steps.flags import Path, StepSpec, parameters_from, parse_flags

SPEC = StepSpec(
    name='build_data',
    description='Build TFRecords in the original DeepLab format from a raw dataset layout.',
    inputs=(Path('raw_data', 'the raw dataset: a folder or a .tar/.tar.gz/.zip archive'),),
    outputs=(Path('output', 'TFRecord shards + dataset.json', filename=artifacts.TFRecords.filename),),
    parameters=parameters_from(BuildConfig),
)


def main(argv=None) -> None:
  args = parse_flags(SPEC, argv)
  config = BuildConfig.from_flags(args)
  # Imported after parsing so that --help stays fast (numpy, PIL; never TensorFlow).
  from deeplab.datasets import build
  dataset = layouts.get(config.dataset, **config.layout_options())
  raw_data = locations.input_location('raw_data', args.raw_data)
  out_path = locations.output_location('output', args.output,
                                      artifacts.TFRecords.filename, {'raw_data': raw_data})
  with contextlib.ExitStack() as stack:
    raw_root = stack.enter_context(archives.open_input(raw_data))
    tfrecords = artifacts.TFRecords.new(stack)
    _, stats = build.build(dataset, raw_root, tfrecords.folder, config)
    tfrecords.write(out_path)
  runtime.log.info('wrote %s: %d examples', out_path, stats.images)
  runtime.emit_metrics(
      images=stats.images, images_per_sec=round(stats.images_per_sec, 2),
      bytes_written=stats.bytes_written,
      **{f'examples_{split}': count for split, count in stats.split_counts.items()},
      skipped=len(stats.skipped),
      skipped_examples=[f'{s["split"]}/{s["id"]}' for s in stats.skipped])


if __name__ == '__main__':
  runtime.run_step(main)
