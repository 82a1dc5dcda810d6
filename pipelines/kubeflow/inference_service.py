"""The KServe InferenceService that serves an export's SavedModel on a Kubeflow cluster.

    python -m pipelines.kubeflow.inference_service --storage_uri=gs://BUCKET/RUN/saved_model \\
        [--name=deeplab] [--namespace=NS] | kubectl apply -f -

`storage_uri` is where the export step's `saved_model/` folder lies unpacked (model.tar.gz holds
it; in a KFP run the export task's output artifact URI, unpacked into the bucket). KServe's
tensorflow runtime (TF Serving) serves it: POST {"instances": [image HxWx3]} to
/v1/models/NAME:predict, or {"signature_name": "encoded_image", "instances": [{"b64": ...}]}.
"""
import argparse
import sys

import yaml

from deeplab.errors import UserError


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--storage_uri', required=True, help='the SavedModel base folder (gs://, s3://, pvc://)')
  parser.add_argument('--name', default='deeplab', help='the InferenceService name')
  parser.add_argument('--namespace', default=None)
  parser.add_argument('--min_replicas', type=int, default=None)
  args = parser.parse_args(argv)
  from deeplab import serving
  try:
    manifest = serving.kserve_inference_service(args.name, args.storage_uri, args.namespace,
                                                min_replicas=args.min_replicas)
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  yaml.safe_dump(manifest, sys.stdout, sort_keys=False)
  return 0


if __name__ == '__main__':
  sys.exit(main())
