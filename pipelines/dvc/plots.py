"""The JSON record lists that dvc.yaml's plots read, made from a step's output.

    python -m pipelines.dvc.plots record --to=artifacts/train_log.json -- python -m steps.train ...
    python -m pipelines.dvc.plots per-class-iou artifacts/metrics.json --to=artifacts/per_class_iou.json
    python -m pipelines.dvc.plots confusion artifacts/confusion_matrix.json --to=artifacts/confusion.json

`record` runs a step, passing its output through, and writes its JSON metric lines as a list (DVC plots
read a JSON list, not JSON lines). A pipe (`cmd | tee`) would hide the step's exit code from DVC and
record a failed stage as a success: `record` exits with the step's own code, and writes the file either
way, so a failed run's curve can still be looked at.

`per-class-iou` turns evaluate's `per_class_iou` ({class name: IoU or null}) into one record per class
for a bar plot; null (a class absent from both the labels and the predictions) has no bar, so it is
left out.

`confusion` turns evaluate's confusion_matrix.json (pixel counts) into records for DVC's `confusion`
template, which counts one record per (actual, predicted) pair: a record per pixel would be millions,
so each ground-truth class gets 100 records shared out by its pixels' predictions (largest
remainders), and a cell's count reads as the percent of that class's pixels. Classes without
ground-truth pixels have no row.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List

from pipelines.shared import run_passing_through


def write_records(records: List[dict], to: str) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(to)), exist_ok=True)
  with open(to, 'w') as f:
    json.dump(records, f, indent=1)
    f.write('\n')


def record(command: List[str], to: str, only_with: str = '') -> int:
  """Runs `command`, echoing its stdout; writes its metric records (those with key `only_with`, if
  given) to `to`; returns its exit code."""
  exit_code, records = run_passing_through(command)
  write_records([r for r in records if not only_with or only_with in r], to)
  return exit_code


def per_class_records(metrics: dict) -> List[dict]:
  return [{'class': name, 'iou': iou} for name, iou in metrics['per_class_iou'].items() if iou is not None]


RECORDS_PER_CLASS = 100


def confusion_records(confusion: dict) -> List[dict]:
  """{'actual', 'predicted'} records: RECORDS_PER_CLASS per ground-truth class with pixels."""
  names, records = confusion['class_names'], []
  for actual, row in zip(names, confusion['matrix']):
    total = sum(row)
    if not total:
      continue
    shares = [RECORDS_PER_CLASS * count / total for count in row]
    counts = [int(share) for share in shares]
    by_remainder = sorted(range(len(row)), key=lambda i: (counts[i] - shares[i], i))
    for i in by_remainder[:RECORDS_PER_CLASS - sum(counts)]:
      counts[i] += 1
    for predicted, count in zip(names, counts):
      records += [{'actual': actual, 'predicted': predicted}] * count
  return records


def convert(source: str, what: str, to_records, to: str) -> int:
  """Writes `to_records` of the JSON file `source` to `to`; 1 with an error line if unreadable."""
  try:
    with open(source) as f:
      records = to_records(json.load(f))
  except (OSError, ValueError, KeyError, TypeError) as e:
    print(f'error: {source}: cannot read {what} ({e})', file=sys.stderr)
    return 1
  write_records(records, to)
  return 0


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m pipelines.dvc.plots', description=__doc__.split('\n')[0])
  commands = parser.add_subparsers(dest='kind', required=True)
  record_parser = commands.add_parser('record', help="run a step and write its metric lines as a JSON list")
  record_parser.add_argument('--to', required=True, help='the JSON list file to write')
  record_parser.add_argument('--only-with', default='step', help='keep only records with this key ("" = all)')
  record_parser.add_argument('command', nargs=argparse.REMAINDER, help='-- then the command to run')
  iou_parser = commands.add_parser('per-class-iou', help="evaluate's per-class IoU as one record per class")
  iou_parser.add_argument('metrics', help="evaluate's metrics.json")
  iou_parser.add_argument('--to', required=True, help='the JSON list file to write')
  confusion_parser = commands.add_parser('confusion', help="evaluate's confusion matrix as records for "
                                         "DVC's confusion template")
  confusion_parser.add_argument('confusion', help="evaluate's confusion_matrix.json")
  confusion_parser.add_argument('--to', required=True, help='the JSON list file to write')
  args = parser.parse_args(argv)
  if args.kind == 'per-class-iou':
    return convert(args.metrics, 'per_class_iou', per_class_records, args.to)
  if args.kind == 'confusion':
    return convert(args.confusion, 'the confusion matrix', confusion_records, args.to)
  command = args.command[1:] if args.command[:1] == ['--'] else args.command
  if not command:
    record_parser.error('no command given after --')
  return record(command, args.to, args.only_with)


if __name__ == '__main__':
  sys.exit(main())
