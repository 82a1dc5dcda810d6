"""DVC: the dvc.yaml generator (`python -m pipelines.dvc`) and the plot data its stages write."""
