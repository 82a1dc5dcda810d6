"""`python -m pipelines.dvc [--check]`: regenerates dvc.yaml (pipelines/dvc/config.py)."""
import sys

from pipelines.dvc.config import main

sys.exit(main())
