"""The shared training pipeline and the entry-point code behind MLproject."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ banners out of the logs
