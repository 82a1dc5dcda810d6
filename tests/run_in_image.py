"""The image test: run INSIDE the project image by `make image-test` (pipelines/image.sh pipes this file
to the image's `python`; tests/ itself is not in the image), as the image's own non-root user.

    python - cpu|cuda < tests/run_in_image.py

Runs the tiny pipeline end to end the way the orchestrators do, one `python -m steps.<name>` process
per step: synthetic data -> build_data -> train -> evaluate -> export (frozen graph, SavedModel,
TFLite) -> predict with each of the three formats; then serves the model on 127.0.0.1 and posts an
image to /predict over a real socket. Also: the installed packages agree (`pip check`), TensorFlow is
the flavour asked for (cuda: its NVIDIA libraries are known to the dynamic loader), and a Python older
than the floor, where the image has one, stops a step with one line. Prints one line per check; exits
1 at the first failure with the failing command's output.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request

TENSORFLOW = sys.argv[1] if len(sys.argv) > 1 else 'cuda'
# The tiny settings of the orchestrator end-to-end tests: they check the wiring, not the model.
SYNTHETIC = ['--layout=folder', '--seed=0', '--num_train=8', '--num_val=4', '--image_size=65,65']
TINY_TRAIN = ['--training_number_of_steps=4', '--train_batch_size=2', '--train_crop_size=65,65',
              '--depth_multiplier=0.5', '--log_steps=2', '--save_interval_steps=4']
FORMATS = ('frozen_graph', 'saved_model', 'tflite')
# Debian's own interpreter, older than the floor in Debian 12 (3.11.2); python:3.11-slim has none.
SYSTEM_PYTHON = '/usr/bin/python3'
SERVER_START_SECONDS = 120
# Straight to the server on 127.0.0.1, whatever proxy the environment names.
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Failed(Exception):
  pass


def check(condition, what):
  if not condition:
    raise Failed(what)


def run(*command, expect_status=0):
  """Runs a command in the work folder; returns its stdout and stderr."""
  started = time.monotonic()
  result = subprocess.run(command, capture_output=True, text=True)
  if result.returncode != expect_status:
    raise Failed(f'{" ".join(command)} exited with {result.returncode} (expected {expect_status})\n'
                 f'--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-6000:]}')
  print(f'  ok {time.monotonic() - started:5.1f}s  {" ".join(command)[:150]}', flush=True)
  return result.stdout, result.stderr


def step(name, *flags):
  """Runs a step; returns its metric records (the JSON lines of its stdout)."""
  stdout, _ = run(sys.executable, '-m', f'steps.{name}', *flags)
  records = []
  for line in stdout.splitlines():
    try:
      record = json.loads(line)
    except ValueError:
      continue
    if isinstance(record, dict):
      records.append(record)
  return records


def metric(records, key):
  values = [r[key] for r in records if key in r]
  check(values, f'no metric {key!r} in {records}')
  return values[-1]


def check_environment():
  check(os.getuid() != 0, 'the image runs as root')
  run(sys.executable, '-m', 'pip', 'check')
  stdout, _ = run(sys.executable, '-c', 'import json, tensorflow as tf; '
                  'print(json.dumps(dict(tf.sysconfig.get_build_info())))')
  cuda_build = json.loads(stdout.splitlines()[-1]).get('is_cuda_build', False)
  check(cuda_build == (TENSORFLOW == 'cuda'), f'TENSORFLOW={TENSORFLOW} but is_cuda_build={cuda_build}')
  if TENSORFLOW == 'cuda':  # the NVIDIA pip libraries are registered with the dynamic loader
    stdout, _ = run('/sbin/ldconfig', '-p')
    for library in ('libcudart.so.12', 'libcudnn.so.9', 'libcublas.so.12', 'libnccl.so.2'):
      check(library in stdout, f'{library} is not known to the dynamic loader (ldconfig -p)')


def check_python_floor():
  if not os.path.exists(SYSTEM_PYTHON):
    print(f'  skipped: no {SYSTEM_PYTHON} in the image to check the Python floor with', flush=True)
    return
  version, _ = run(SYSTEM_PYTHON, '-c', 'import sys; print(*sys.version_info[:3], sep=".")')
  if tuple(map(int, version.split('.'))) >= (3, 11, 4):
    print(f'  skipped: {SYSTEM_PYTHON} is {version.strip()}, not older than the floor', flush=True)
    return
  _, stderr = run(SYSTEM_PYTHON, '-m', 'steps.build_data', '--help', expect_status=1)
  lines = stderr.strip().splitlines()
  check(len(lines) == 1 and lines[0].startswith(f'error: Python {version.strip()} '),
        f'expected one error line naming Python {version.strip()}, got: {stderr}')


def free_port():
  with socket.socket() as probe:
    probe.bind(('127.0.0.1', 0))
    return probe.getsockname()[1]


def check_server(model, image):
  port = free_port()
  url = f'http://127.0.0.1:{port}'
  log = tempfile.TemporaryFile('w+')  # the server's output, shown on a failure (a pipe could fill up)

  def server_log():
    log.seek(0)
    return log.read()[-4000:]

  server = subprocess.Popen([sys.executable, '-m', 'steps.serve', f'--model={model}', '--host=127.0.0.1',
                             f'--port={port}'], stdout=log, stderr=subprocess.STDOUT, text=True)
  try:
    deadline = time.monotonic() + SERVER_START_SECONDS
    while True:
      if server.poll() is not None:
        raise Failed(f'the server exited with {server.returncode}:\n{server_log()}')
      try:
        with HTTP.open(f'{url}/healthz', timeout=5) as response:
          if response.status == 200:
            break
      except OSError:
        if time.monotonic() > deadline:
          raise Failed(f'the server did not answer on {url} within {SERVER_START_SECONDS}s:\n{server_log()}')
        time.sleep(1)
    with open(image, 'rb') as f:
      data = f.read()
    request = urllib.request.Request(f'{url}/predict', data=data, headers={'Content-Type': 'image/jpeg'})
    with HTTP.open(request, timeout=120) as response:
      check(response.status == 200, f'POST /predict answered {response.status}')
      answer = json.load(response)
    check(answer['width'] == 65 and answer['height'] == 65 and answer['classes'], f'POST /predict: {answer}')
    request = urllib.request.Request(f'{url}/predict?format=labels', data=data)
    with HTTP.open(request, timeout=120) as response:
      check(response.headers['Content-Type'] == 'image/png' and response.read(8) == b'\x89PNG\r\n\x1a\n',
            'POST /predict?format=labels did not answer a PNG')
    print(f'  ok        POST {url}/predict: 200, {len(answer["classes"])} classes; ?format=labels: a PNG',
          flush=True)
  finally:
    if server.poll() is None:
      server.send_signal(signal.SIGTERM)
    server.wait(timeout=60)
  check(server.returncode == 0, f'the server exited with {server.returncode} on SIGTERM:\n{server_log()}')


def main():
  started = time.monotonic()
  print(f'image test (TENSORFLOW={TENSORFLOW}), Python {sys.version.split()[0]}, uid {os.getuid()}', flush=True)
  check_environment()
  check_python_floor()
  work = tempfile.TemporaryDirectory(prefix='image-test-')
  os.chdir(work.name)
  run(sys.executable, '-m', 'deeplab.datasets.synthetic', '--output=raw', *SYNTHETIC)
  records = step('build_data', '--raw_data=raw', '--dataset=folder', '--num_shards=1', '--output=tfrecords.tar.gz')
  check(metric(records, 'images') == 12, f'build_data: {records}')
  records = step('train', '--tfrecords=tfrecords.tar.gz', '--output=checkpoint.tar.gz', '--train_logdir=train',
                 *TINY_TRAIN)
  check(metric(records, 'global_step') == 4, f'train: {records}')
  records = step('evaluate', '--tfrecords=tfrecords.tar.gz', '--checkpoint=checkpoint.tar.gz',
                 '--output=metrics.json')
  check(0 <= metric(records, 'miou') <= 1, f'evaluate: {records}')
  step('export', '--checkpoint=checkpoint.tar.gz', '--tfrecords=tfrecords.tar.gz', '--output=model.tar.gz',
       f'--export_formats={",".join(FORMATS)}')
  with tarfile.open('model.tar.gz') as tar:
    names = tar.getnames()
  check('frozen_inference_graph.pb' in names and 'model.tflite' in names
        and any(n.startswith('saved_model/') and n.endswith('/saved_model.pb') for n in names),
        f'model.tar.gz lacks a format: {names}')
  for model_format in FORMATS:
    records = step('predict', '--model=model.tar.gz', '--images=raw/images', f'--model_format={model_format}',
                   f'--output=predictions-{model_format}.tar.gz')
    check(metric(records, 'images') == 12, f'predict ({model_format}): {records}')
  check_server('model.tar.gz', sorted(os.path.join('raw/images', n) for n in os.listdir('raw/images'))[0])
  os.chdir('/')
  work.cleanup()
  print(f'image test passed in {time.monotonic() - started:.0f}s', flush=True)


if __name__ == '__main__':
  try:
    main()
  except Failed as e:
    print(f'image test FAILED: {e}', file=sys.stderr, flush=True)
    sys.exit(1)
