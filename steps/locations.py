"""Where a step's inputs and outputs are: the paths its flags give, checked before any work.

An output may not be an input, lie inside one, or sit where it cannot be written; an input must exist.
The orchestrators' files (pipelines/) pass every path explicitly: steps know no orchestrator's
folders.
"""
from __future__ import annotations

import os
import tempfile
from typing import Optional

from deeplab.errors import UserError
from steps.files import is_inside

def input_location(name: str, flag: Optional[str], optional: bool = False) -> Optional[str]:
  """The path input `name` is read from: its flag, which must name something that exists. None for
  an `optional` input not given."""
  if not flag:
    if optional:
      return None
    raise UserError(f'input {name!r} not given: pass --{name}=PATH (a folder or a .tar/.tar.gz/.zip '
                    'archive)')
  if not os.path.exists(flag):
    raise UserError(f'--{name}: {flag} does not exist')
  return flag


def output_location(name: str, flag: Optional[str], filename: str, inputs: dict) -> str:
  """The file path output `name` is written to: its flag (a folder, or a path ending in /, gets
  `filename` inside it), else `filename` in the working directory, as a command-line tool writes.

  Checked before the step does any work (see `check_output`) against `inputs`, the step's input
  flags and the paths they resolved to.
  """
  path = flag or filename
  if flag and (flag.endswith(os.sep) or os.path.isdir(flag)):
    path = os.path.join(flag, filename)
  return check_output(name, path, inputs)


def check_output(flag: str, out_path: str, inputs: dict) -> str:
  """Refuses, before any work, an output that would destroy an input or cannot be written.

  `inputs` maps flag names to the paths given (None for absent ones). The output may not be the
  same file as an input nor lie inside an input folder; its folder, or the nearest existing parent
  it will be created in, must be a writable folder (tried by creating and removing a hidden file).
  Returns `out_path`.
  """
  real_out = os.path.realpath(out_path)
  for name, path in inputs.items():
    if not path:
      continue
    real_in = os.path.realpath(path)
    same = os.path.exists(out_path) and os.path.exists(path) and os.path.samefile(out_path, path)
    if same or is_inside(real_out, real_in):
      raise UserError(f'--{flag}={out_path} {"is" if same or real_out == real_in else "lies inside"} '
                      f'the input --{name}={path}; refusing to overwrite an input, choose another output')
  if os.path.isdir(out_path):
    raise UserError(f'--{flag}={out_path} is a folder; expected a file path for the artifact')
  folder = os.path.dirname(os.path.abspath(out_path))
  ancestor = folder
  while not os.path.exists(ancestor):
    ancestor = os.path.dirname(ancestor)
  if not os.path.isdir(ancestor):
    raise UserError(f'--{flag}={out_path}: {ancestor} is a file, not a folder; expected a path '
                    'whose parents are folders')
  try:  # in the output folder, or where it will be created: nothing is left behind either way
    fd, probe = tempfile.mkstemp(prefix='.deeplab-write-test-', dir=ancestor)
    os.close(fd)
    os.remove(probe)
  except OSError as e:
    raise UserError(f'--{flag}={out_path}: cannot write in {ancestor} ({e.strerror}); expected a '
                    'writable folder') from None
  return out_path
