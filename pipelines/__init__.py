"""The training pipeline (`train.py`) and the commands built on it: `python -m pipelines --help`."""

import os

# TensorFlow's C++ log, its errors included: its `cuInit` and `use_unbounded_threadpool`
# lines on every run read like failures and are not. Python exceptions still surface.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# A checkpoint's files come down one by one on resume: no progress bar for each.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
