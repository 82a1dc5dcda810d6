"""The pipeline steps in pipeline order, keyed by module name, with their flag SPECs."""
from steps import build_data, evaluate, export, predict, train

SPECS = {spec.name: spec for spec in (build_data.SPEC, train.SPEC, evaluate.SPEC, export.SPEC,
                                      predict.SPEC)}


def dashed(name: str) -> str:
  """A step's name as Valohai and Kubeflow spell it (build_data -> build-data)."""
  return name.replace('_', '-')


def output_filename(step: str) -> str:
  """The file name of a step's one artifact (e.g. checkpoint.tar.gz)."""
  (output,) = SPECS[step].outputs
  return output.filename
