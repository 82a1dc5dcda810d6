"""Every step's flags, derived from the settings schemas.

Each step module declares a `SPEC = StepSpec(...)` at import time (no TensorFlow import) whose
parameters come from the schemas in deeplab/config.py (`parameters_from`) plus the few that only
say where the step finds its input (e.g. `dataset` for TFRecords without a manifest). Everything
else is derived from the SPEC: the argparse parser here, the orchestrators' files (pipelines/), and
the tests that hold those files to the same names, types and defaults.

Flag conventions:
- snake_case names, `--name=value` or `--name value`;
- booleans accept `--name`, `--no-name`, `--name=true|false|1|0|yes|no`;
- multi-valued parameters accept a repeated flag and/or comma-separated values
  (`--atrous_rates=6 --atrous_rates=12` == `--atrous_rates=6,12`); an empty value means "none".
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Optional, Sequence

from deeplab.config import NONE, PRESET, check_bounds, settings_of

# Parameter types, named as the orchestrators' files name them.
STRING, INTEGER, FLOAT, FLAG = 'string', 'integer', 'float', 'flag'
_CASTS = {STRING: str, INTEGER: int, FLOAT: float}
_TYPE_NAMES = {str: STRING, int: INTEGER, float: FLOAT, bool: FLAG}
_TRUE = {'1', 'true', 'yes', 'on'}
_FALSE = {'0', 'false', 'no', 'off'}


@dataclasses.dataclass(frozen=True)
class Parameter:
  """A typed step parameter (a flag; in the orchestrators' files, a parameter or a params key)."""
  name: str
  type: str
  default: Any
  description: str
  choices: tuple = ()
  multiple: bool = False  # a list of `type` values (default is then a tuple)
  min: Optional[float] = None
  max: Optional[float] = None
  # Words accepted besides values of `value_type` (then `type` is STRING for the orchestrators):
  # e.g. `preset` and `none` for a setting that defaults to the model variant's value.
  keywords: tuple = ()
  value_type: str = ''


@dataclasses.dataclass(frozen=True)
class Path:
  """A named input or output location (a path flag; an orchestrator's input, output or artifact)."""
  name: str
  description: str
  optional: bool = False
  filename: str = ''  # outputs: the artifact's file name in the outputs folder


@dataclasses.dataclass(frozen=True)
class StepSpec:
  name: str  # the module name under steps/, e.g. 'build_data'
  description: str
  parameters: tuple = ()
  inputs: tuple = ()
  outputs: tuple = ()

  def parameter(self, name: str) -> Parameter:
    for p in self.parameters:
      if p.name == name:
        return p
    raise KeyError(name)

  def defaults(self) -> dict:
    return {p.name: p.default for p in self.parameters}


# Where train and evaluate learn which dataset original DeepLab shards (no dataset.json) hold.
DATASET_PARAMETER = Parameter('dataset', STRING, '', 'the dataset name, needed only for TFRecords '
                              'without dataset.json')


def parse_bool(text: str) -> bool:
  lowered = str(text).strip().lower()
  if lowered in _TRUE:
    return True
  if lowered in _FALSE:
    return False
  raise ValueError(f'expected true or false, got {text!r}')


def _check_range(param: Parameter, value):
  if value not in param.keywords:
    check_bounds(value, param.min, param.max, param.choices)
  return value


def parameters_from(schema: type, exclude: Sequence[str] = ()) -> tuple:
  """The step parameters of a settings schema (deeplab/config.py): one per flag field.

  A field that defaults to the model variant's preset becomes a string parameter whose values are
  `preset`, `none` or the numbers themselves; the schema reads them.
  """
  parameters = []
  for info in settings_of(schema):
    if not info.flag or info.name in exclude:
      continue
    if info.preset:
      parameters.append(Parameter(info.name, STRING, (PRESET,) if info.multiple else PRESET,
                                  info.help, choices=info.choices, multiple=info.multiple,
                                  min=info.min, max=info.max, keywords=(PRESET, NONE),
                                  value_type=_TYPE_NAMES[info.kind]))
    else:
      parameters.append(Parameter(info.name, _TYPE_NAMES[info.kind], info.default, info.help,
                                  choices=info.choices, multiple=info.multiple, min=info.min,
                                  max=info.max))
  return tuple(parameters)


def cast_value(param: Parameter, raw) -> Any:
  """Casts one command-line value of `param`; raises ValueError with what was expected."""
  if param.type == FLAG:
    return parse_bool(raw)
  if param.multiple:
    items = []
    for chunk in (raw if isinstance(raw, (list, tuple)) else [raw]):
      items.extend(part.strip() for part in str(chunk).split(',') if part.strip())
    return tuple(_check_range(param, _cast_scalar(param, item)) for item in items)
  return _check_range(param, _cast_scalar(param, raw))


def _cast_scalar(param: Parameter, raw):
  if raw in param.keywords:
    return raw
  kind = param.value_type or param.type
  try:
    return _CASTS[kind](raw)
  except ValueError:
    words = ''.join(f'{word!r} or ' for word in param.keywords)
    raise ValueError(f'expected {words}{"an" if kind == INTEGER else "a"} {kind}, got {raw!r}') from None


class _Parser(argparse.ArgumentParser):
  """argparse that reports a bad flag as one line and exits 2 (no usage dump)."""

  def error(self, message):
    self.exit(2, f'error: {self.prog}: {message}\n')


def build_parser(spec: StepSpec) -> argparse.ArgumentParser:
  parser = _Parser(prog=f'python -m steps.{spec.name}', description=spec.description,
                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  for path in spec.inputs:
    parser.add_argument(f'--{path.name}', default=None, metavar='PATH',
                        help=f'input: {path.description}' + (' (optional)' if path.optional else ''))
  for path in spec.outputs:
    parser.add_argument(f'--{path.name}', default=None, metavar='PATH',
                        help=f'output: {path.description} (a file, or a folder to write {path.filename} in; '
                             f'default: {path.filename} in the working directory)')
  for param in spec.parameters:
    kwargs = dict(default=param.default, help=param.description)
    if param.type == FLAG:
      kwargs.update(nargs='?', const='true', metavar='BOOL')
    elif param.multiple:
      # argparse's append would extend the default; the default is applied after parsing instead.
      kwargs.update(action='append', metavar='V[,V...]', default=None)
    elif param.choices:
      kwargs.update(metavar='{' + ','.join(map(str, param.choices)) + '}')
    parser.add_argument(f'--{param.name}', **kwargs)
    if param.type == FLAG:  # --no-<name>, as some tools render false booleans (boolean_optional)
      parser.add_argument(f'--no-{param.name}', dest=param.name, action='store_const',
                          const='false', help=argparse.SUPPRESS)
  return parser


def parse_flags(spec: StepSpec, argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  """Parses and casts the flags of `spec`; a bad value exits 2 with one line naming the flag."""
  parser = build_parser(spec)
  args = parser.parse_args(argv)
  for param in spec.parameters:
    raw = getattr(args, param.name)
    if raw is None and param.multiple:
      raw = param.default
    if raw is param.default:  # untouched default: already typed
      setattr(args, param.name, raw)
      continue
    try:
      setattr(args, param.name, cast_value(param, raw))
    except ValueError as e:
      parser.error(f'--{param.name}: {e}')
  return args
