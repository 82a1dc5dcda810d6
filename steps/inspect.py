"""inspect: any artifact -> its card on stdout, as text or one JSON line (a tool, not a pipeline
node; it writes nothing).

    python -m steps.inspect checkpoint.tar.gz          model.json: the model, dataset, lineage
    python -m steps.inspect model.tar.gz --json        ... of an exported model, with its evaluation
    python -m steps.inspect tfrecords.tar.gz           the dataset and each split's fingerprint
    python -m steps.inspect metrics.json               evaluate's figures and what it scored
    python -m steps.inspect predictions.tar.gz         how many images were segmented

Archives are opened by the same safe extraction as every step's inputs (steps/archives.py), and
each kind is read, and checked, as the steps read it (steps/artifacts.py).
"""
import contextlib
import json
import os

from deeplab.errors import UserError
from steps import archives, artifacts, runtime
from steps.flags import FLAG, Parameter, Path, StepSpec, build_parser, parse_bool

SPEC = StepSpec(
    name='inspect',
    description='Print the card of any artifact: checkpoint.tar.gz, model.tar.gz, tfrecords, '
                "evaluate's metrics.json, predictions (given as --artifact or first argument).",
    inputs=(Path('artifact', 'the artifact: a folder, an archive or a metrics.json'),),
    parameters=(Parameter('json', FLAG, False, 'print the card as JSON instead of text'),),
)
EXPECTED = ("expected checkpoint.tar.gz, model.tar.gz, tfrecords.tar.gz, predictions.tar.gz "
            "(a folder or an archive of one) or evaluate's metrics.json")


def _model_card(kind, card) -> dict:
  return dict(kind=kind, **card.to_json())


def _tfrecords_card(tfrecords) -> dict:
  from deeplab.lineage import data_fingerprint
  manifest = tfrecords.manifest
  return {'kind': 'tfrecords', 'dataset': manifest.describe().to_json(),
          'splits': {split: dict(data_fingerprint(manifest, split),
                                 num_examples=manifest.splits[split].num_examples)
                     for split in sorted(manifest.splits)}}


def _evaluation_card(evaluation) -> dict:
  metrics = dict(evaluation.metrics)
  if 'checkpoint_sha256' in metrics:  # checked as export reads it; older ones are shown as they are
    metrics.update(evaluation.card_section('artifact'))
  return dict(kind='evaluation', **metrics)


def _predictions_card(stack, root) -> dict:
  """predictions.json, checked as merge_predictions reads it."""
  return dict(kind='predictions', **artifacts.Predictions.open(stack, root).manifest)


def card_of(stack, path: str) -> dict:
  """The card of the artifact at `path`, as a JSON-able dict with its "kind"."""
  if os.path.isfile(path) and not archives.is_archive(path):
    return _evaluation_card(artifacts.Evaluation.open(path, 'artifact'))
  folder = stack.enter_context(archives.open_input(path))
  kinds = {'an exported model': lambda root: _model_card('model', artifacts.Model.open(stack, root).card),
           'a checkpoint': lambda root: _model_card('checkpoint',
                                                    artifacts.Checkpoint.open(stack, root).card),
           'TFRecords (dataset.json)': lambda root: _tfrecords_card(artifacts.TFRecords.open(stack, root)),
           'predictions': lambda root: _predictions_card(stack, root),
           'an evaluation': lambda root: _evaluation_card(artifacts.Evaluation.open(root, 'artifact'))}
  kind, root = artifacts.identify(folder)  # looks through a folder an archive wraps it in
  if kind is None:
    raise UserError(f'--artifact: {path} holds no artifact of this project; {EXPECTED}')
  return kinds[kind](root)


def _scalar(value) -> str:
  return json.dumps(value) if value is None or isinstance(value, bool) else str(value)


def render(value, indent: int = 0) -> list:
  """The text lines of a card: one `key: value` per scalar, nested sections indented, lists of
  numbers or names on one line, lists of sections as `-` items."""
  pad = '  ' * indent
  lines = []
  for key, item in value.items():
    if isinstance(item, dict):
      lines += [f'{pad}{key}:'] + render(item, indent + 1)
    elif isinstance(item, list) and any(isinstance(element, dict) for element in item):
      lines.append(f'{pad}{key}:')
      for element in item:
        nested = (render(element, indent + 2) if isinstance(element, dict)
                  else [f'{pad}    {_scalar(element)}'])
        lines += [f'{pad}  - {nested[0].lstrip()}'] + nested[1:]
    elif isinstance(item, list):
      lines.append(f'{pad}{key}: {", ".join(map(_scalar, item))}')
    else:
      lines.append(f'{pad}{key}: {_scalar(item)}')
  return lines


def main(argv=None):
  parser = build_parser(SPEC)
  parser.add_argument('path', nargs='?', metavar='ARTIFACT', help='the artifact (as --artifact)')
  args = parser.parse_args(argv)
  path = args.artifact or args.path
  if not path or (args.artifact and args.path):
    parser.error('name one artifact: python -m steps.inspect ARTIFACT [--json]')
  try:
    as_json = parse_bool(args.json) if isinstance(args.json, str) else args.json
  except ValueError as e:
    parser.error(f'--json: {e}')
  if not os.path.exists(path):
    raise UserError(f'--artifact: {path} does not exist')
  with contextlib.ExitStack() as stack:
    card = card_of(stack, path)
  print(json.dumps(card, sort_keys=True) if as_json else '\n'.join(render(card)),
        flush=True)


if __name__ == '__main__':
  runtime.run_step(main)
