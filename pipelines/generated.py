"""Writing, or checking, a file generated from the step SPECs (valohai.yaml, kfp_components.py)."""
import sys


def write_or_check(path: str, text: str, check: bool, regenerate: str) -> int:
  """Writes `text` to `path`, or with `check` only compares; returns the exit status (1: out of date)."""
  if not check:
    with open(path, 'w') as f:
      f.write(text)
    return 0
  with open(path) as f:
    if f.read() == text:
      return 0
  print(f'error: {path} is out of date: run {regenerate}', file=sys.stderr)
  return 1
