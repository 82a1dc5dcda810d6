"""The KServe InferenceService that serves an export's SavedModel on a Kubeflow cluster.

    python -m pipelines.kubeflow.inference_service --storage_uri=gs://BUCKET/RUN/saved_model \\
        [--name=deeplab] [--namespace=NS] | kubectl apply -f -

`storage_uri` is where the export step's `saved_model/` folder lies unpacked (model.tar.gz holds
it; in a KFP run the export task's output artifact URI, unpacked into the bucket). KServe's
tensorflow runtime (TF Serving) serves it: POST {"instances": [image HxWx3]} to
/v1/models/NAME:predict, or {"signature_name": "encoded_image", "instances": [{"b64": ...}]}.
"""
import argparse
import re
import sys
from typing import Optional

import yaml

from deeplab.errors import UserError

# KServe's webhook takes InferenceService names of this form; Kubernetes bounds them at 63 (DNS label).
_INFERENCE_SERVICE_NAME = re.compile(r'[a-z]([-a-z0-9]{0,61}[a-z0-9])?')


def inference_service(name: str, storage_uri: str, namespace: Optional[str] = None,
                      runtime_version: Optional[str] = None, min_replicas: Optional[int] = None,
                      resources: Optional[dict] = None) -> dict:
  """A KServe v1beta1 InferenceService (as a dict, ready for yaml.safe_dump or the Kubernetes API)
  serving the SavedModel at `storage_uri` with KServe's tensorflow runtime (TF Serving).

  `storage_uri` names the SavedModel's base folder, the `saved_model/` of an export, which holds
  the numbered version folder TF Serving expects. `resources` is a Kubernetes
  ResourceRequirements dict ({'requests': {...}, 'limits': {...}}).
  """
  if not _INFERENCE_SERVICE_NAME.fullmatch(name):
    raise UserError(f'InferenceService name {name!r}: expected lower-case letters, digits and '
                    "'-', starting with a letter, ending with a letter or digit, at most 63 long")
  if not storage_uri:
    raise UserError('storage_uri: expected the URI of the SavedModel folder (gs://, s3://, pvc://...)')
  model = {'modelFormat': {'name': 'tensorflow'}, 'storageUri': storage_uri}
  if runtime_version:
    model['runtimeVersion'] = runtime_version
  if resources:
    model['resources'] = resources
  predictor = {'model': model}
  if min_replicas is not None:
    predictor['minReplicas'] = int(min_replicas)
  metadata = {'name': name}
  if namespace:
    metadata['namespace'] = namespace
  return {'apiVersion': 'serving.kserve.io/v1beta1', 'kind': 'InferenceService',
          'metadata': metadata, 'spec': {'predictor': predictor}}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--storage_uri', required=True, help='the SavedModel base folder (gs://, s3://, pvc://)')
  parser.add_argument('--name', default='deeplab', help='the InferenceService name')
  parser.add_argument('--namespace', default=None)
  parser.add_argument('--min_replicas', type=int, default=None)
  args = parser.parse_args(argv)
  try:
    manifest = inference_service(args.name, args.storage_uri, args.namespace,
                                 min_replicas=args.min_replicas)
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  yaml.safe_dump(manifest, sys.stdout, sort_keys=False)
  return 0


if __name__ == '__main__':
  sys.exit(main())
