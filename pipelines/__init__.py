"""The training pipeline (`train.py`) and the commands built on it: `python -m pipelines --help`."""

import contextlib
import importlib.abc
import importlib.util
import os
import sys

TF_LOG_LEVEL_ENV = "TF_CPP_MIN_LOG_LEVEL"


@contextlib.contextmanager
def _stderr_closed():
    """Inside, what anything writes to file descriptor 2 is dropped, C++ code's included."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class _QuietLoader(importlib.abc.Loader):
    """A module's own loader, run with stderr closed while the module executes."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        module.__loader__ = self.loader
        with _stderr_closed():
            self.loader.exec_module(module)


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Imports TensorFlow, once, with stderr closed. Its start-up lines (CUDA drivers not found,
    `absl::InitializeLog`, each twice) are written by C++ code before TensorFlow reads
    TF_CPP_MIN_LOG_LEVEL, and read like failures on every run. An import that fails still
    raises its exception, which Python prints once stderr is back."""

    def find_spec(self, name, path, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


# TensorFlow's C++ log, its errors included: its `cuInit` and `use_unbounded_threadpool`
# lines on every run read like failures and are not. Python exceptions still surface. A user
# who sets TF_CPP_MIN_LOG_LEVEL below 3 (0 shows everything) gets the start-up lines too; our
# own child processes (sweep workers, workflow steps) inherit the 3 and stay quiet.
QUIET_TF_LOG_LEVEL = "3"
if (
    os.environ.setdefault(TF_LOG_LEVEL_ENV, QUIET_TF_LOG_LEVEL) == QUIET_TF_LOG_LEVEL
    and "tensorflow" not in sys.modules
):
    sys.meta_path.insert(0, _QuietTensorFlowImport())
# A checkpoint's files come down one by one on resume: no progress bar for each.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
