"""The training pipeline (`train.py`) and the commands built on it: `python -m pipelines --help`."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ banners out of the logs
