"""Benchmark: peak memory of `serve` under concurrent POSTs of a 49-megapixel PNG, against one POST,
with the default settings, and how long /healthz takes meanwhile.

    python -m bench.serve_memory [--rounds=1] [--clients=8] [--side=7000]

The demo's model (bench/predict_memory.py) is served by `steps.serve` with its defaults on
127.0.0.1 and a free port, a fresh server per contender and round (bench/harness.py interleaves
them): `one` posts one `side` x `side` PNG of a few shapes (a few kilobytes, under the default
--max_image_pixels and --max_body_bytes), `concurrent` posts it from `clients` threads at once.
While they run, /healthz is asked every half second. A value is the peak resident memory (VmHWM)
of gunicorn's worker, the process holding the model, read from /proc before the server is
stopped. With the pixel budget holding, concurrent / one stays near 1: the images beyond the
budget wait their turn (or get 503 after --max_queue_seconds) instead of being decoded at once.
The notes give the answers' statuses and the slowest /healthz.
"""
import collections
import concurrent.futures
import http.client
import os
import re
import subprocess
import sys
import tempfile
import time

from bench import harness
from bench.predict_memory import ENV, drawn_png, export_demo_model

START_SECONDS = 180
ANSWER_SECONDS = 600


def _worker_peak_mib(pid: int) -> float:
  with open(f'/proc/{pid}/status') as status:
    return int(next(line.split()[1] for line in status if line.startswith('VmHWM:'))) / 1024


def _request(port, method, path, body=None):
  """(status, seconds) of one request."""
  connection = http.client.HTTPConnection('127.0.0.1', port, timeout=ANSWER_SECONDS)
  started = time.perf_counter()
  try:
    connection.request(method, path, body=body,
                       headers={'Content-Type': 'image/png'} if body else {})
    response = connection.getresponse()
    response.read()
    return response.status, time.perf_counter() - started
  finally:
    connection.close()


class ServeRun:
  """`steps.serve` with its defaults on a free port, its log in `log_path`."""

  def __init__(self, model, log_path):
    self.log_path = log_path
    self._log = open(log_path, 'w')
    self.process = subprocess.Popen(
        [sys.executable, '-m', 'steps.serve', f'--model={model}', '--port=0'],
        stdout=self._log, stderr=subprocess.STDOUT, env=ENV)
    deadline = time.monotonic() + START_SECONDS
    while True:
      log = open(log_path).read()
      listening = re.search(r'Listening at: http://127\.0\.0\.1:(\d+)', log)
      worker = re.search(r'Booting worker with pid: (\d+)', log)
      if listening and worker and 'ASGI server listening' in log:
        self.port, self.worker_pid = int(listening.group(1)), int(worker.group(1))
        return
      if time.monotonic() > deadline or self.process.poll() is not None:
        self.stop()
        raise SystemExit(f'the server did not start:\n{log[-3000:]}')
      time.sleep(0.5)

  def stop(self):
    self.process.terminate()
    self.process.wait(timeout=300)
    self._log.close()


def measure(args) -> harness.Measurement:
  notes = {}
  with tempfile.TemporaryDirectory() as folder:
    model = export_demo_model(folder)
    image_path = os.path.join(folder, 'large.png')
    drawn_png(image_path, args.side, 'RGB')
    with open(image_path, 'rb') as f:
      body = f.read()

    def serve_with(name, clients):
      def run():
        server = ServeRun(model, os.path.join(folder, f'{name}.log'))
        try:
          with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            posts = [pool.submit(_request, server.port, 'POST', '/predict', body)
                     for _ in range(clients)]
            slowest_health = 0.0
            while not all(post.done() for post in posts):
              status, seconds = _request(server.port, 'GET', '/healthz')
              assert status == 200, status
              slowest_health = max(slowest_health, seconds)
              time.sleep(0.5)
            statuses = collections.Counter(post.result()[0] for post in posts)
          peak = _worker_peak_mib(server.worker_pid)
        finally:
          server.stop()
        for status, count in statuses.items():
          key = f'{name}_answers_{status}'
          notes[key] = notes.get(key, 0) + count
        notes[f'{name}_slowest_healthz_seconds'] = max(
            notes.get(f'{name}_slowest_healthz_seconds', 0.0), slowest_health)
        return peak
      return run

    values = harness.interleave({'one': serve_with('one', 1),
                                 'concurrent': serve_with('concurrent', args.clients)},
                                args.rounds)
  return harness.Measurement(
      'serve_memory', 'peak MiB', 'one', values, higher_is_better=False,
      target=f'{args.clients} POSTs at once of a {args.side}x{args.side} PNG ({len(body)} bytes), '
             'default settings: near 1 x one', notes=notes)


def add_arguments(parser):
  parser.add_argument('--rounds', type=int, default=1)
  parser.add_argument('--clients', type=int, default=8)
  parser.add_argument('--side', type=int, default=7000)


if __name__ == '__main__':
  harness.main(__doc__, add_arguments, measure)
