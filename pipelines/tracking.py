"""MLflow around a training run: the run's lifecycle, autologging and what we log on top."""

import contextlib
import importlib.metadata
import os
import time

import keras
import matplotlib.pyplot as plt
import mlflow
from mlflow.models import Model, infer_signature

INPUT_EXAMPLE_ROWS = 2
# The packages a logged model needs to load; naming them skips MLflow's slow inference.
BACKEND_PACKAGES = {"tensorflow": ["tensorflow"], "jax": ["jax", "jaxlib"], "torch": ["torch"]}


def enable_autolog():
    """Autolog params, per-epoch metrics, the optimizer and the model summary.

    Keras 3 autologging ignores input examples, so the model is logged by `log_model`
    below, with signature and input example; datasets are logged with their real
    source and all three splits rather than autolog's training-only entry.
    """
    mlflow.keras.autolog(log_models=False, log_datasets=False, silent=True)


@contextlib.contextmanager
def training_run(run_name, tags):
    """Start (or, under `mlflow run`, resume) a run that never stays RUNNING.

    It ends FINISHED, FAILED on an exception, and KILLED on Ctrl-C or SIGTERM
    (the entry point turns SIGTERM into KeyboardInterrupt). Inside an active run,
    for example a sweep's parent, it starts a nested run.
    """
    nested = mlflow.active_run() is not None
    run = mlflow.start_run(run_name=run_name, nested=nested, tags=tags)
    try:
        yield run
    except KeyboardInterrupt:
        mlflow.end_run("KILLED")
        raise
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    mlflow.end_run("FINISHED")


def end_pending_run(status="FAILED"):
    """End the run `mlflow run` created for us when we fail before resuming it."""
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if run_id:
        client = mlflow.MlflowClient()
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_terminated(run_id, status)


def log_new_params(params):
    """Log params the run does not hold yet (`mlflow run` logs its -P values as given)."""
    run = mlflow.active_run()
    logged = mlflow.MlflowClient().get_run(run.info.run_id).data.params
    mlflow.log_params({name: value for name, value in params.items() if name not in logged})


def log_splits(splits, name):
    """Each split as a dataset input: name, source, digest, schema and context."""
    inputs = [("train", splits.x_train, splits.y_train), ("test", splits.x_test, splits.y_test)]
    if splits.x_val is not None:
        inputs.insert(1, ("validation", splits.x_val, splits.y_val))
    digests = {}
    for context, features, targets in inputs:
        dataset = mlflow.data.from_numpy(features, targets=targets, source=splits.source, name=f"{name}-{context}")
        mlflow.log_input(dataset, context=context)
        digests[context] = dataset.digest
    return digests


def log_model(model, examples):
    """Log the Keras model with its signature, an input example and pinned requirements."""
    example = examples[:INPUT_EXAMPLE_ROWS]
    backend = keras.backend.backend()
    requirements = [f"keras=={keras.__version__}"] + [
        f"{package}=={importlib.metadata.version(package)}" for package in BACKEND_PACKAGES.get(backend, [])
    ]
    return Model.log(
        artifact_path=None,
        name="model",
        flavor=_KerasFlavor,
        flavor_name="mlflow.keras",
        model=model,
        signature=infer_signature(example, model.predict(example, verbose=0)),
        input_example=example,
        pip_requirements=requirements,
    )


class _KerasFlavor:
    """`mlflow.keras`, but creating the model folder before the input example is written
    into it: MLflow 3.17's `mlflow.keras.log_model(input_example=...)` fails with
    FileNotFoundError otherwise (mlflow/mlflow#16183, still open)."""

    @staticmethod
    def save_model(path, **kwargs):
        os.makedirs(path, exist_ok=True)
        mlflow.keras.save_model(path=path, **kwargs)


def log_figure(figure, artifact_file):
    mlflow.log_figure(figure, artifact_file)
    plt.close(figure)  # sweeps train many models in one process


class EpochTimer(keras.callbacks.Callback):
    """Log each epoch's wall time as it ends, so slow epochs show in the UI live."""

    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)
        mlflow.log_metric("epoch_time_s", self.seconds[-1], step=epoch, synchronous=False)
