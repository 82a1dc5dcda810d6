"""Every benchmark in one run, then one table: `python -m bench` (what `make bench` runs).

    python -m bench [--quick]

Each benchmark interleaves its contenders round by round and reports per-round ratios against its
baseline (bench/harness.py). --quick runs fewer rounds on smaller inputs, to check the benches
themselves rather than to measure.
"""
import argparse
import time

from bench import (build_data, distributed, harness, inference, predict, predict_memory,
                   serve_memory, shard_check, tflite_sizes, train_input, train_memory, train_resnet,
                   train_step)

BENCHMARKS = (train_input, train_step, build_data, shard_check, predict_memory, serve_memory,
              inference, predict, tflite_sizes, train_resnet, train_memory, distributed)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--quick', action='store_true')
  quick = parser.parse_args().quick
  load_before = harness.load_average()
  started = time.perf_counter()
  measurements, seconds = [], {}
  for module in BENCHMARKS:
    module_started = time.perf_counter()
    module_parser = argparse.ArgumentParser()
    module.add_arguments(module_parser)
    args = module_parser.parse_args([])
    if quick:
      for name, value in (('rounds', 2), ('steps', 5), ('num_images', 100), ('megapixels', 2),
                          ('iterations', 3), ('sizes', '257'), ('photos', 8), ('crop', 129)):
        if hasattr(args, name):
          setattr(args, name, value)
    for measurement in harness.as_list(module.measure(args)):
      harness.report(measurement)
      measurements.append(measurement)
    seconds[module.__name__.split('.')[-1]] = round(time.perf_counter() - module_started)
  print()
  cpu, extensions = train_resnet.cpu_description()
  limit = train_resnet.onednn_isa_limit()
  print(f'CPU: {cpu}; vector extensions: {" ".join(extensions) or "none listed"}'
        + (f'; oneDNN limited to {limit} (ONEDNN_MAX_CPU_ISA)' if limit else ''))
  print(harness.table(measurements, load_before, harness.load_average()))
  print(f'{time.perf_counter() - started:.0f} s in all; seconds per benchmark: '
        + ', '.join(f'{name} {value}' for name, value in seconds.items()))


if __name__ == '__main__':
  main()
