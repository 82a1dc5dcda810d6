"""Runs a step, passing its output through, and records its JSON metric lines as a JSON list.

    python -m pipelines.record_metrics --to=artifacts/train_log.json -- python -m steps.train ...

DVC plots read a JSON list of records, not JSON lines. A pipe (`cmd | tee`) would hide the step's exit
code from DVC and record a failed stage as a success; this wrapper exits with the step's own code (the
file is written either way, so a failed run's curve can still be looked at).
"""
from __future__ import annotations

import argparse
import sys
from typing import List

from pipelines.metric_lines import run_passing_through
from steps.artifacts import write_json_atomic


def run_and_record(command: List[str], to: str, only_with: str = '') -> int:
  """Runs `command`, echoing its stdout; writes its metric records (those with key `only_with`, if
  given) to `to`; returns its exit code."""
  exit_code, records = run_passing_through(command)
  write_json_atomic([r for r in records if not only_with or only_with in r], to)
  return exit_code


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m pipelines.record_metrics', description=__doc__.split('\n')[0])
  parser.add_argument('--to', required=True, help='the JSON list file to write')
  parser.add_argument('--only-with', default='step', help='keep only records with this key ("" = all)')
  parser.add_argument('command', nargs=argparse.REMAINDER, help='-- then the command to run')
  args = parser.parse_args(argv)
  command = args.command[1:] if args.command[:1] == ['--'] else args.command
  if not command:
    parser.error('no command given after --')
  return run_and_record(command, args.to, args.only_with)


if __name__ == '__main__':
  sys.exit(main())
