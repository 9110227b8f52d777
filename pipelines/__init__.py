"""The training pipeline (`train.py`) and the commands built on it: `python -m pipelines --help`."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ banners out of the logs
# A checkpoint's files come down one by one on resume: no progress bar for each.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
