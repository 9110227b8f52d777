"""MLflow around a training run: the run's lifecycle, autologging and what we log on top."""

import contextlib
import importlib.metadata
import os
import signal
import time

import keras
import matplotlib.pyplot as plt
import mlflow
import optuna
from mlflow.models import Model, infer_signature
from mlflow.utils.git_utils import get_git_commit

INPUT_EXAMPLE_ROWS = 2
GIT_COMMIT_TAG = "mlflow.source.git.commit"
DRY_RUN_TAG = "dry_run"
# How SQLite and PostgreSQL report a second insert of a dataset's key (experiment, name, digest).
DATASET_KEY_VIOLATIONS = ("UNIQUE constraint failed: datasets.", '"dataset_pk"')
DATASET_RACE_RETRIES = 3
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
def mlflow_run(run_name, tags, parent_run_id=None):
    """Start (or, under `mlflow run`, resume) an MLflow run that never stays RUNNING.

    It ends FINISHED, FAILED on an exception, and KILLED on Ctrl-C or SIGTERM
    (the entry point turns SIGTERM into KeyboardInterrupt) or when a sweep prunes it,
    as MLflow's own Optuna storage marks pruned trials. Inside an active run, or
    given `parent_run_id` (a sweep's study run), it starts a nested run.
    """
    nested = mlflow.active_run() is not None
    tags = {**code_version(), **tags}
    # Hold Ctrl-C and SIGTERM while the run is created: arriving mid-creation, they would
    # leave a RUNNING run no one ends. A signal held meanwhile is delivered inside the try.
    unblocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        run = mlflow.start_run(run_name=run_name, nested=nested, parent_run_id=parent_run_id, tags=tags)
    except BaseException:
        signal.pthread_sigmask(signal.SIG_SETMASK, unblocked)
        raise
    try:
        signal.pthread_sigmask(signal.SIG_SETMASK, unblocked)
        yield run
    except (KeyboardInterrupt, optuna.TrialPruned):
        mlflow.end_run("KILLED")
        raise
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    mlflow.end_run("FINISHED")


def code_version():
    """The project's git commit as MLflow's own source tag: MLflow sets it only when the
    main script lives in the repository, which `python -m` and notebooks do not guarantee."""
    commit = get_git_commit(os.path.dirname(os.path.abspath(__file__)))
    return {GIT_COMMIT_TAG: commit} if commit else {}


def use_experiment(requested, default_name):
    """Make the experiment current and return its id: the one `mlflow run` chose, else
    `requested`, else MLFLOW_EXPERIMENT_ID/_NAME from the environment, else `default_name`."""
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if run_id:
        return mlflow.MlflowClient().get_run(run_id).info.experiment_id
    if requested:
        return mlflow.set_experiment(requested).experiment_id
    if os.environ.get("MLFLOW_EXPERIMENT_ID"):
        return mlflow.set_experiment(experiment_id=os.environ["MLFLOW_EXPERIMENT_ID"]).experiment_id
    return mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME") or default_name).experiment_id


def end_pending_run(status="FAILED"):
    """End the run `mlflow run` created for us when we fail before resuming it."""
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if run_id:
        client = mlflow.MlflowClient()
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_terminated(run_id, status)


def mark_pending_run_dry():
    """Tag the run `mlflow run` created for a dry run, which trains nothing: `mlflow run`
    made the run before the command started, and ends it FINISHED itself (it cannot be deleted)."""
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if run_id:
        mlflow.MlflowClient().set_tag(run_id, DRY_RUN_TAG, "true")
        mlflow.MlflowClient().set_tag(
            run_id, "mlflow.note.content", "A dry run: it printed the recipe and trained nothing."
        )


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
    contexts = [context for context, _, _ in inputs]
    datasets = [
        mlflow.data.from_numpy(features, targets=targets, source=splits.source, name=f"{name}-{context}")
        for context, features, targets in inputs
    ]
    log_inputs_racing(datasets, contexts)
    return {context: dataset.digest for context, dataset in zip(contexts, datasets, strict=True)}


def log_inputs_racing(datasets, contexts):
    """Log dataset inputs while other runs may be logging the same new datasets.

    MLflow looks a dataset up, then inserts it: two sweep workers logging the same new
    dataset at once can both miss it, and the loser's insert breaks the unique key. That
    transaction is rolled back whole, so logging again finds the winner's row."""
    for attempt in range(DATASET_RACE_RETRIES + 1):
        try:
            return mlflow.log_inputs(datasets=datasets, contexts=contexts, tags_list=[None] * len(datasets))
        except mlflow.MlflowException as error:
            lost_the_race = any(marker in str(error) for marker in DATASET_KEY_VIOLATIONS)
            if not lost_the_race or attempt == DATASET_RACE_RETRIES:
                raise


def log_model(model, examples, outputs):
    """Log the Keras model with its signature, an input example and pinned requirements.

    The signature's output side comes from `outputs` the model already predicted:
    another predict call here would cost a trace of the predict function."""
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
        signature=infer_signature(example, outputs[:INPUT_EXAMPLE_ROWS]),
        input_example=example,
        pip_requirements=requirements,
        # MLflow would reload the model and predict the example to check that it serves: a
        # second load and predict in every run. The test suite serves logged models instead.
        validate_serving_input=False,
    )


class _KerasFlavor:
    """`mlflow.keras`, but creating the model folder before the input example is written
    into it: MLflow 3.17's `mlflow.keras.log_model(input_example=...)` fails with
    FileNotFoundError otherwise (mlflow/mlflow#16183, still open)."""

    @staticmethod
    def save_model(path, validate_serving_input=None, **kwargs):  # Model.log passes its own kwargs on
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
