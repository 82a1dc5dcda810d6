"""Orchestrator glue: the pipeline graph (graph.py), the Valohai config generator and local runner, the
Kubeflow pipeline, the dvc.yaml generator and DVC plot glue. Everything here is derived from the step
SPECs (steps/*.py) and the graph; the steps never import it."""
