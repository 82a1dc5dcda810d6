"""Orchestrator glue: the Valohai config generator and local runner, the Kubeflow pipeline, DVC metric
glue. Everything here is derived from the step SPECs (steps/*.py); the steps never import it."""
