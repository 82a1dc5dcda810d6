# Two entry points (see README): `make demo` runs the whole pipeline on the embedded synthetic
# dataset; `make test` runs the test suite. Both create the virtualenv first. `make image` and
# `make image-test` build and test the container image (docs/image.md); they need no virtualenv.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
# DVC stages call `python`: the virtualenv's, without activating it.
export PATH := $(abspath $(VENV))/bin:$(PATH)
export DVC_NO_ANALYTICS := 1
export TF_CPP_MIN_LOG_LEVEL := 2

# The image: TENSORFLOW=cuda (default) or cpu; each flavour has its own default tag.
TENSORFLOW ?= cuda
BASE_IMAGE ?= python:3.11-slim
IMAGE ?= deeplab-pipelines:$(if $(filter cpu,$(TENSORFLOW)),cpu,latest)

.PHONY: setup demo test test-fast test-slow test-all bench clean image image-test image-ready

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt $(wildcard requirements/*.txt)
	python3 -m venv $(VENV)
	@$(PYTHON) -c 'import steps'  # the Python floor (steps/__init__.py), before a gigabyte of installs
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -r requirements-dev.txt
	touch $@

# synthetic data -> build_data -> train -> evaluate + export -> predict (dvc.yaml, params.yaml)
demo: setup
	dvc repro
	@echo
	@dvc metrics show
	@$(PYTHON) -c "import json; m = json.load(open('artifacts/metrics.json')); \
	  print(f\"val mIoU {m['miou']:.3f}, pixel accuracy {m['pixel_accuracy']:.3f} on {m['num_images']} images\")"
	@$(PYTHON) -c "import json; \
	  [print(f\"{k}: {v:.4f}\") for r in json.load(open('artifacts/export_log.json')) for k, v in r.items() \
	   if k.endswith(('_pixel_agreement', '_miou'))]"
	@echo "artifacts:"; ls -1 artifacts/*.tar.gz artifacts/deployed/*.tar.gz artifacts/*.json | sed 's/^/  /'
	@echo "evaluation report (figures in artifacts/report/): $(abspath artifacts/report/report.html)"

# Every test but the slow orchestrator runs, on one pytest-xdist worker per core up to 4 (each worker
# holds its own TensorFlow, about 1 GB); a module's tests stay on one worker (--dist loadscope) so
# that its module fixtures are built once, and modules are handed out costliest first, in the order
# tests/conftest.py sorts them (--no-loadscope-reorder: xdist would order them by test count).
# `make test TEST_WORKERS=1` runs them in one process.
TEST_WORKERS ?= $(shell python3 -c 'import os; print(min(4, os.cpu_count() or 1))')
PYTEST := $(PYTHON) -m pytest -q -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder

test: setup
	$(PYTEST)

# The edit loop: the unit tests, in-process and on tiny shapes (no step, server or worker process of
# its own, no whole network built, trained or converted: `make test` runs those).
test-fast: setup
	$(PYTEST) -m "not slow and not process and not heavy"

# The runs of minutes each, left out of make test and run by CI after it: a queued DVC sweep,
# multi-process training losing a worker or stopped by SIGTERM, bfloat16 training the whole demo.
test-slow: setup
	$(PYTEST) -m slow

# Everything: make test and make test-slow in one run.
test-all: setup
	$(PYTEST) -m ""

# Builds the image with whichever container engine works here (docker, podman or buildah).
image:
	sh pipelines/image.sh build "$(IMAGE)" "$(TENSORFLOW)" "$(BASE_IMAGE)"

# Inside the image, as its non-root user: the tiny pipeline end to end and the server answering
# /predict on 127.0.0.1 (tests/run_in_image.py). Minutes, and needs an engine: not part of `make test`.
image-test: image
	sh pipelines/image.sh test "$(IMAGE)" "$(TENSORFLOW)"

# Whether image-test can run here: a working engine and the base image (.ci/run skips it otherwise).
image-ready:
	@sh pipelines/image.sh ready "$(BASE_IMAGE)"

bench: setup
	$(PYTHON) -m bench

clean:
	rm -rf artifacts data/synthetic .deeplab-train .valohai
