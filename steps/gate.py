"""gate: evaluate's metrics.json + export's model.tar.gz -> the same model.tar.gz, byte for byte, only
when the model is good enough to deploy; else one error line and no output.

Good enough: its mIoU on the evaluation split is at least --min_miou and, when evaluate was given a
baseline (the model in production, evaluated on the same split in the same run: metrics.json's
"baseline" section), at least the baseline's mIoU less --max_miou_drop. The orchestrators deploy or
publish the gate's output, never export's, so a model that falls short reaches nothing.
"""
import contextlib
import logging
import math
import shutil
from typing import Optional, Tuple

from deeplab.config import GateConfig
from deeplab.errors import UserError
from steps import archives, artifacts, files, locations, runtime
from steps.flags import Path, StepSpec, parameters_from, parse_flags

log = logging.getLogger('steps.gate')

SPEC = StepSpec(
    name='gate',
    description='Let an exported model through to deployment only if its mIoU on the evaluation '
    'split reaches --min_miou and, when evaluate had a baseline, the baseline\'s mIoU less '
    '--max_miou_drop; otherwise fail with one line saying by how much it fell short.',
    inputs=(
        # Not named `metrics`: in the generated pipeline components that is every step's metric output.
        Path('evaluation', 'metrics.json from evaluate (or a folder holding it)'),
        Path('model', 'model.tar.gz from export: the model evaluated'),
    ),
    outputs=(Path('output', 'the model let through, the same bytes as --model: what deploy or '
                  'publish takes', filename=artifacts.Model.filename),),
    parameters=parameters_from(GateConfig),
)


def _miou(value, where: str, path: str) -> float:
  """An mIoU read from metrics.json: a finite number in [0, 1]."""
  if value is None:
    raise UserError(f'--evaluation: {path}: {where} is null (no pixel of the split was '
                    'evaluated); expected an mIoU in [0, 1]')
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
      or not 0 <= value <= 1:
    raise UserError(f'--evaluation: {path}: {where} is {value!r}; expected an mIoU in [0, 1]')
  return float(value)


def read_evaluation(path: str) -> Tuple[float, str, Optional[float], Optional[str]]:
  """(mIoU, split, the baseline's mIoU or None, the sha256 of the checkpoint scored or None) of
  evaluate's metrics.json at `path` (or in it)."""
  evaluation = artifacts.Evaluation.open(path)  # bounded, JSON, an object with "miou"
  metrics, path = evaluation.metrics, evaluation.path
  split = metrics.get('split')
  if not isinstance(split, str):
    raise UserError(f'--evaluation: {path}: "split" is {split!r}; expected the split\'s name')
  baseline = metrics.get('baseline')
  if baseline is not None and not (isinstance(baseline, dict) and 'miou' in baseline):
    raise UserError(f'--evaluation: {path}: "baseline" has no "miou"; expected the section '
                    'evaluate writes when given --baseline')
  scored = metrics.get('checkpoint_sha256')
  return (_miou(metrics['miou'], '"miou"', path), split,
          None if baseline is None else _miou(baseline['miou'], '"baseline"."miou"', path),
          scored if isinstance(scored, str) else None)


def check_same_model(evaluation: str, scored: Optional[str], model_path: str, card) -> None:
  """Refuses an evaluation of another checkpoint than the one the model was exported from: export
  records in model.json the checkpoint_sha256 of the evaluation it was given."""
  exported = card.evaluation and card.evaluation['checkpoint_sha256']
  if not (scored and exported):
    log.warning('cannot check that --evaluation scored the model gated: %s', 'model.json records no '
                'evaluation (export without --evaluation)' if scored else
                "metrics.json names no checkpoint_sha256 (an evaluate older than lineage)")
  elif scored != exported:
    raise UserError(f'--evaluation: {evaluation} scored the checkpoint with sha256 {scored[:12]}..., '
                    f'but --model {model_path} was exported from {exported[:12]}... (its model.json); '
                    'expected the evaluation of the model gated')


def shortfall(miou: float, split: str, baseline_miou: Optional[float],
              config: GateConfig) -> Tuple[float, Optional[str]]:
  """(margin above the highest bar the model must reach, the error line when it falls short)."""
  bars = [(config.min_miou, lambda n: f'--min_miou={config.min_miou:.{n}f}')]
  if baseline_miou is not None:
    bar = baseline_miou - config.max_miou_drop
    bars.append((bar, lambda n: f"{bar:.{n}f}, the baseline's mIoU {baseline_miou:.{n}f} less "
                                f'--max_miou_drop={config.max_miou_drop:.{n}f}'))
  bar, named = max(bars, key=lambda b: b[0])
  # Rounded: 0.46 - 0.01 is 0.45000000000000007 in floating point, and 0.45 must pass it.
  margin = round(miou - bar, 12)
  if margin >= 0:
    return margin, None
  digits = 3 if -margin >= 0.0005 else 6  # never "0.000 below"
  return margin, (f'mIoU {miou:.{digits}f} on {split} is {-margin:.{digits}f} below {named(digits)}; '
                  'nothing deployed')


def main(argv=None):
  args = parse_flags(SPEC, argv)
  evaluation = locations.input_location('evaluation', args.evaluation)
  model_path = locations.input_location('model', args.model)
  out_path = locations.output_location('output', args.output, SPEC.outputs[0].filename,
                                       {'evaluation': evaluation, 'model': model_path})
  config = GateConfig.from_flags(args)
  miou, split, baseline_miou, scored = read_evaluation(evaluation)
  with contextlib.ExitStack() as stack:
    model = artifacts.Model.open(stack, model_path)  # refuses what is not an exported model
    check_same_model(evaluation, scored, model_path, model.card)
    margin, refusal = shortfall(miou, split, baseline_miou, config)
    if refusal:
      raise UserError(refusal)
    packed = archives.delivered_file(model_path, archives.is_archive)
    if packed:  # the bytes export wrote, as they are
      with files.atomic_output(out_path) as out, open(packed, 'rb') as source:
        shutil.copyfileobj(source, out)
    else:  # an unpacked model folder: packed as export packs it
      model.write(out_path)
  runtime.emit_metrics(miou=miou, baseline_miou=baseline_miou, margin=margin)
  log.info('mIoU %.4f on %s passed the gate by %.4f; wrote %s', miou, split, margin, out_path)


if __name__ == '__main__':
  runtime.run_step(main)
