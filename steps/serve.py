"""serve: model.tar.gz -> an HTTP endpoint (POST /predict, GET /healthz, GET /model) until stopped.

The app is deeplab/serving.py (Flask behind a body-buffering front, run by gunicorn's asyncio
worker). SIGTERM lets the requests in progress finish, then stops the server.
"""
import contextlib
import logging

from deeplab.config import ServeConfig
from steps import artifacts, locations, runtime
from steps.flags import Path, StepSpec, parameters_from, parse_flags

log = logging.getLogger('steps.serve')

SPEC = StepSpec(
    name='serve',
    description='Serve an exported model over HTTP: POST an image to /predict, get classes or a '
                'label map back.',
    inputs=(Path('model', 'model.tar.gz from export'),),
    parameters=parameters_from(ServeConfig),
)


def main(argv=None):
  args = parse_flags(SPEC, argv)
  model_path = locations.input_location('model', args.model)
  config = ServeConfig.from_flags(args)
  from deeplab import serving
  with contextlib.ExitStack() as stack:
    model = artifacts.Model.open(stack, model_path)
    log.info('serving %s on %s:%d (SIGTERM or Ctrl-C stops it)', model_path, config.host, config.port)
    serving.serve(model.folder, config)


if __name__ == '__main__':
  runtime.run_step(main)
