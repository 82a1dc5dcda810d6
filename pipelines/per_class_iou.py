"""Turns evaluate's metrics.json per-class IoU into the record list a DVC bar plot reads.

    python -m pipelines.per_class_iou artifacts/metrics.json --to=artifacts/per_class_iou.json

metrics.json holds `per_class_iou` as {class name: IoU or null}; null (a class absent from both the
labels and the predictions) has no bar, so it is left out.
"""
from __future__ import annotations

import argparse
import json
import sys


def per_class_records(metrics: dict) -> list:
  return [{'class': name, 'iou': iou} for name, iou in metrics['per_class_iou'].items() if iou is not None]


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m pipelines.per_class_iou', description=__doc__.split('\n')[0])
  parser.add_argument('metrics', help="evaluate's metrics.json")
  parser.add_argument('--to', required=True, help='the JSON list file to write')
  args = parser.parse_args(argv)
  try:
    with open(args.metrics) as f:
      records = per_class_records(json.load(f))
  except (OSError, ValueError, KeyError) as e:
    print(f'error: {args.metrics}: cannot read per_class_iou ({e})', file=sys.stderr)
    return 1
  with open(args.to, 'w') as f:
    json.dump(records, f, indent=1)
    f.write('\n')
  return 0


if __name__ == '__main__':
  sys.exit(main())
