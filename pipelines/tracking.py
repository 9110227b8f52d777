"""MLflow around a run: the store, the run's lifecycle, and what a training logs besides
its Keras callbacks (`logging_callbacks`)."""

import contextlib
import functools
import importlib.metadata
import json
import logging
import os
import shutil
import sqlite3
import sys
import threading
import time
import warnings
from pathlib import Path

import lazy_loader as lazy
import optuna
from filelock import FileLock

from experiments import InputError
from experiments.task import shown
from pipelines import liveness, schema, stopping

# Imported on first use: a command that parses, prints help or refuses a parameter needs none of them.
keras = lazy.load("keras")
mlflow = lazy.load("mlflow")
plt = lazy.load("matplotlib.pyplot", suppress_warning=True)

INPUT_EXAMPLE_ROWS = 2
PYFUNC_CODE_FOLDER = "code"  # where MLflow looks for a logged model's own modules
SQLITE_BUSY_SECONDS = 20  # as long as MLflow's own sessions wait for a busy SQLite database
END_RUN_RETRIES = 5  # a run's last writes, tried again while the store is briefly unavailable (0.5 s, 1 s, ...)
MAX_RUN_NAME = 120  # names stay readable in the runs table and chart legends
# How a run's name writes a parameter it sets beyond its entry point's defaults: `churn-seed2`.
SHORT_PARAM_NAMES = {
    "learning_rate": "lr",
    "batch_size": "batch",
    "validation_fraction": "val",
    "max_samples": "n",
    "epochs": "ep",
    "dropout": "drop",
}
NOT_IN_NAMES = {"data"}  # a path: the run's datasets record which data it read
# How SQLite and PostgreSQL report a second insert of a dataset's key (experiment, name, digest).
DATASET_KEY_VIOLATIONS = ("UNIQUE constraint failed: datasets.", '"dataset_pk"')
DATASET_RACE_RETRIES = 3
# MLflow announces the start and end of every run's system metrics at INFO.
logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
# MLflow logs each "database is locked" with a traceback before raising it. The writes that
# must not be lost are retried (`retrying`), and an error that persists still reaches the
# command as an exception.
logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
CREATING_SUFFIX = ".creating"  # a new SQLite store's name until its schema is complete
SERVER_ARTIFACT_ROOT_ENV = "_MLFLOW_SERVER_ARTIFACT_ROOT"  # MLflow's default artifact root, when set
ALEMBIC_TMP_PREFIX = "_alembic_tmp_"  # a table Alembic copies while it migrates another
CREATION_QUIET_SECONDS = 30  # a store unchanged this long is no longer being created by anyone
# The tables a user's work lives in, and which of their rows count (not the Default experiment).
DATA_TABLES = {"runs": "", "registered_models": "", "logged_models": "", "experiments": "WHERE experiment_id != 0"}
# The packages a logged model needs to load; naming them skips MLflow's slow inference.
BACKEND_PACKAGES = {"tensorflow": ["tensorflow"], "jax": ["jax", "jaxlib"], "torch": ["torch"]}


def open_store():
    """Open the tracking store, creating it first when it is a new SQLite database.

    A new SQLite store is built under another name and renamed into place once complete:
    MLflow creates its tables in some sixty migrations, and a stop among them (Ctrl-C on
    the first command) would leave a database every later command fails on. A file lock
    beside the database serializes commands started at the same moment on a new store,
    which would otherwise race to create the tables. A store that a stop left half-created
    elsewhere (`mlflow run` creates the store itself, outside this guard) is rebuilt.

    A SQLite store is also switched to write-ahead logging, once (the mode stays with the
    file): sweep workers, system metrics and heartbeats write from many processes and
    threads at once, and in SQLite's default mode a writer that finds a reader in its way
    can fail at once with "database is locked" instead of waiting its turn.
    """
    uri = mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///"):
        database = Path(uri.removeprefix("sqlite:///").split("?")[0])
        database.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(f"{database}.lock"):
            if database.exists() and _half_created(database):
                _remove_sqlite(database)
            if not database.exists() or database.stat().st_size == 0:
                _create_sqlite_store(database)
            mlflow.MlflowClient().search_experiments(max_results=1)
            _use_write_ahead_log(database)


def _use_write_ahead_log(database):
    with contextlib.closing(sqlite3.connect(database, timeout=SQLITE_BUSY_SECONDS)) as connection:
        if connection.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            connection.execute("PRAGMA journal_mode=WAL")


def _create_sqlite_store(database):
    """Create MLflow's schema in `<database>.creating`, then rename it to `database`: a stop
    at any moment leaves either no store or a whole one."""
    from mlflow.store.tracking import DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    building = database.with_name(f"{database.name}{CREATING_SUFFIX}")
    _remove_sqlite(building)  # what a stop left of an earlier creation
    # The artifact root MLflow gives the Default experiment, as it would choose it for this store.
    artifact_root = os.environ.get(SERVER_ARTIFACT_ROOT_ENV, DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH)
    SqlAlchemyStore(f"sqlite:///{building}", artifact_root).engine.dispose()
    _use_write_ahead_log(building)
    os.replace(building, database)


def _remove_sqlite(database):
    for path in (database, Path(f"{database}-wal"), Path(f"{database}-shm"), Path(f"{database}-journal")):
        path.unlink(missing_ok=True)


def _half_created(database):
    """True when a stop cut short the creation of the SQLite store `database`: it holds no
    runs, experiments or models, has not changed for CREATION_QUIET_SECONDS (no creation is
    under way), and its schema is incomplete. Such a store is rebuilt. One that holds work
    is left to MLflow, whose error says what it found."""
    if database.stat().st_size == 0:
        return True
    changed = max(path.stat().st_mtime for path in (database, Path(f"{database}-wal")) if path.exists())
    if time.time() - changed < CREATION_QUIET_SECONDS:
        return False
    with contextlib.closing(sqlite3.connect(database, timeout=SQLITE_BUSY_SECONDS)) as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        for table in tables:
            counted = DATA_TABLES.get(table.removeprefix(ALEMBIC_TMP_PREFIX))
            if counted is not None and connection.execute(f'SELECT count(*) FROM "{table}" {counted}').fetchone()[0]:
                return False
        version = None
        if "alembic_version" in tables:
            version = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    leftovers = any(table.startswith(ALEMBIC_TMP_PREFIX) for table in tables)
    if not leftovers and version is not None and version[0] == _schema_head():
        return False
    print(f"warning: {database} was left half-created by a stopped command: created anew", file=sys.stderr)
    return True


def _schema_head():
    """The schema revision MLflow's migrations end at, as MLflow itself reads it (with Alembic)."""
    from alembic.script import ScriptDirectory
    from mlflow.store import db_migrations

    return ScriptDirectory(os.path.dirname(db_migrations.__file__)).get_current_head()


@contextlib.contextmanager
def mlflow_run(run_name, tags, system_metrics_interval, parent_run_id=None, resume_run_id=None, experiment_id=None):
    """Start (or, under `mlflow run`, resume) an MLflow run that never stays RUNNING.

    It ends FINISHED, FAILED on an exception, and KILLED on a stop signal (tagged with its
    cause) or when a sweep prunes it, as MLflow's own Optuna storage marks pruned trials.
    While it runs, it carries its process's host and id and a heartbeat (`liveness`), and
    MLflow's system metrics every `system_metrics_interval` seconds (0: none). Inside an
    active run, or given `parent_run_id` (a sweep's study run), it starts a nested run;
    given `resume_run_id`, it resumes that run. `experiment_id` puts a new run in that experiment
    without making it the process's current one (a run `mlflow run` created stays where it is).
    A top-level run is linked from the run `mlflow run` made, when the work left it (`leave_launch`).
    """
    nested = mlflow.active_run() is not None
    tags = {**code_version(), **liveness.process_tags(), **tags}
    if system_metrics_interval:
        mlflow.set_system_metrics_sampling_interval(system_metrics_interval)
    # A stop signal while the run is created would leave it RUNNING: it is held until the
    # `try` below, which ends the run whatever happens, and while the run ends.
    with stopping.held():
        run = mlflow.start_run(
            run_id=resume_run_id,
            run_name=run_name,
            nested=nested,
            parent_run_id=parent_run_id,
            experiment_id=None if (resume_run_id or os.environ.get("MLFLOW_RUN_ID")) else experiment_id,
            tags=tags,
            log_system_metrics=bool(system_metrics_interval),
        )
        liveness.HEARTBEAT.add(run.info.run_id, mlflow.get_tracking_uri())
        stopping.run_started()
    status, tags = "FAILED", {}
    try:
        stopping.raise_if_stopped()
        if not (nested or parent_run_id):
            point_launch_to(run.info.run_id, run.info.experiment_id)
        with stopping.on_forced_stop(functools.partial(end_killed, run.info.run_id, mlflow.get_tracking_uri())):
            yield run
        status = "FINISHED"
    except optuna.TrialPruned:
        status = "KILLED"
        raise
    except KeyboardInterrupt as stop:
        status, tags = "KILLED", {schema.STOP_CAUSE_TAG: str(stop) or "SIGINT"}
        raise
    finally:
        with stopping.held():
            liveness.HEARTBEAT.remove(run.info.run_id)
            end_run(status, tags)


def end_killed(run_id, tracking_uri, cause):
    """End the run KILLED from the stop watchdog's thread, while the main thread is stuck."""
    client = mlflow.MlflowClient(tracking_uri)
    client.set_tag(run_id, schema.STOP_CAUSE_TAG, cause)
    client.set_terminated(run_id, "KILLED")


def end_run(status, tags=None):
    """End the active run with `status` (and `tags`), trying again while the store is busy:
    a run's end must not be lost to a moment of contention."""
    run_id, client = mlflow.active_run().info.run_id, mlflow.MlflowClient()
    if tags:
        retrying(lambda: client.log_batch(run_id, tags=[mlflow.entities.RunTag(k, str(v)) for k, v in tags.items()]))
    retrying(lambda: client.set_terminated(run_id, status))
    try:
        mlflow.end_run(status)  # pops the run and stops its system metrics; its write repeats the one above
    except mlflow.MlflowException:
        pass  # the status is recorded already


def retrying(write):
    """`write()`, tried again while the store answers that it is briefly unavailable."""
    for attempt in range(END_RUN_RETRIES + 1):
        try:
            return write()
        except mlflow.MlflowException as error:
            if error.error_code != "TEMPORARILY_UNAVAILABLE" or attempt == END_RUN_RETRIES:
                raise
            time.sleep(0.5 * 2**attempt)


def code_version():
    """The project's git commit as MLflow's own source tag: MLflow sets it only when the
    main script lives in the repository, which `python -m` and notebooks do not guarantee."""
    commit = mlflow.utils.git_utils.get_git_commit(os.path.dirname(os.path.abspath(__file__)))
    return {schema.GIT_COMMIT_TAG: commit} if commit else {}


def use_experiment(requested, default_name):
    """Make the experiment current and return its id: `requested`, else the one `mlflow run`
    put its run in (`--experiment-name`), else MLFLOW_EXPERIMENT_ID/_NAME from the environment,
    else `default_name`. `mlflow run` puts its run in Default when no experiment is named: the
    command's runs go to `default_name` all the same, as they do without `mlflow run`, and the
    launch's run points to them (`leave_launch`)."""
    open_store()
    launched = os.environ.get("MLFLOW_RUN_ID")
    if launched:
        client = mlflow.MlflowClient()
        experiment = client.get_experiment(client.get_run(launched).info.experiment_id)
        chosen_by_launch = not requested and experiment.experiment_id != DEFAULT_EXPERIMENT_ID
        if chosen_by_launch or requested == experiment.name:
            return experiment.experiment_id
        leave_launch()
    if requested:
        source, chosen = "experiment", {"experiment_name": requested}
    elif os.environ.get("MLFLOW_EXPERIMENT_ID"):
        source, chosen = "MLFLOW_EXPERIMENT_ID", {"experiment_id": os.environ["MLFLOW_EXPERIMENT_ID"]}
    else:
        source = "MLFLOW_EXPERIMENT_NAME" if os.environ.get("MLFLOW_EXPERIMENT_NAME") else "experiment"
        chosen = {"experiment_name": os.environ.get("MLFLOW_EXPERIMENT_NAME") or default_name}
    try:
        return mlflow.set_experiment(**chosen).experiment_id
    except mlflow.MlflowException as error:  # a deleted experiment, an id the store lacks
        if error.error_code in ("INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST"):
            raise InputError(f"{source}: {shown(error.message, limit=200)}") from None
        raise


# --- the run `mlflow run` made before the command started -----------------------------------

DEFAULT_EXPERIMENT_ID = "0"  # MLflow's Default, where `mlflow run` puts its run when no experiment is named
_left_launch = {}  # "run_id": the run `mlflow run` made, once the command works elsewhere; "pointed": said so


def launched_run_id():
    """The run `mlflow run` made for this command, or None: whether the work goes on in it or not."""
    return os.environ.get("MLFLOW_RUN_ID") or _left_launch.get("run_id")


def leave_launch():
    """The command's runs go elsewhere than the run `mlflow run` made (a task's experiment, a
    resumed run). That run stays RUNNING, with this process's heartbeat, until `mlflow run` ends
    it as the command exits (a stop keeps it KILLED: `stopping.keep_status`), and points to
    the run the work went on in (`point_launch_to`). Our child processes never see it."""
    run_id = os.environ.pop("MLFLOW_RUN_ID", None)
    if run_id is None:
        return
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)  # `mlflow run`'s choice for its own run
    _left_launch.update(run_id=run_id, pointed=False)
    tags = [mlflow.entities.RunTag(key, value) for key, value in liveness.process_tags().items()]
    mlflow.MlflowClient().log_batch(run_id, tags=tags)
    liveness.HEARTBEAT.add(run_id, mlflow.get_tracking_uri())


def point_launch_to(run_id, experiment_id):
    """Say on the run `mlflow run` made, once, that the work went on in run `run_id`: a tag to
    follow, and a description with a link. MLflow ends that run itself; it cannot be deleted."""
    launch = _left_launch.get("run_id")
    if launch is None or _left_launch["pointed"] or launch == run_id:
        return
    _left_launch["pointed"] = True
    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    experiment = client.get_experiment(experiment_id).name
    link = run_link(experiment_id, run_id, run.info.run_name)
    note = f"This launch's work went on in run {link} ({run_id}), in experiment '{experiment}'."
    tags = {schema.LAUNCH_TAG: run_id, schema.DESCRIPTION_TAG: note}
    client.log_batch(launch, tags=[mlflow.entities.RunTag(key, value) for key, value in tags.items()])


def forget_launch():
    """The command is over: the next one in this process (a test's) starts with no launch of its own."""
    if "run_id" in _left_launch:
        liveness.HEARTBEAT.remove(_left_launch["run_id"])
    _left_launch.clear()


def end_pending_run(status="FAILED"):
    """End the run `mlflow run` created for us when we fail before it ends otherwise."""
    run_id = launched_run_id()
    if run_id:
        client = mlflow.MlflowClient()
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_terminated(run_id, status)


def mark_pending_run_dry():
    """Tag the run `mlflow run` created for a dry run, which trains nothing: `mlflow run`
    made the run before the command started, and ends it FINISHED itself (it cannot be deleted)."""
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if run_id:
        mlflow.MlflowClient().set_tag(run_id, schema.DRY_RUN_TAG, "true")
        mlflow.MlflowClient().set_tag(
            run_id, schema.DESCRIPTION_TAG, "A dry run: it printed the recipe and trained nothing."
        )


def log_new_params(params):
    """Log params the run does not hold yet (`mlflow run` logs its -P values as given)."""
    run = mlflow.active_run()
    logged = mlflow.MlflowClient().get_run(run.info.run_id).data.params
    mlflow.log_params({name: value for name, value in params.items() if name not in logged})


def split_datasets(splits, name):
    """{context: MLflow dataset} of each split: name, source, digest and schema."""
    inputs = [("train", splits.x_train, splits.y_train), ("test", splits.x_test, splits.y_test)]
    if splits.x_val is not None:
        inputs.insert(1, ("validation", splits.x_val, splits.y_val))
    with warnings.catch_warnings():
        # MLflow registers its local-file source twice and says so on every dataset: noise, not news.
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")
        return {
            context: mlflow.data.from_numpy(features, targets=targets, source=splits.source, name=f"{name}-{context}")
            for context, features, targets in inputs
        }


def log_datasets(datasets):
    """Each split's dataset as an input of the active run, with its context."""
    log_inputs_racing(list(datasets.values()), list(datasets))


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


@functools.cache
def map_installed_packages():
    """Start MLflow's map of the installed packages, once per process, in a thread.

    Logging a model checks its pinned requirements against this environment, and MLflow
    first maps every installed package to its modules, in pure Python, a cost each run would
    pay in its last steps. Started as training starts, it runs while TensorFlow's kernels
    leave the GIL free. `log_model` joins it. (A private MLflow function: if it moves,
    nothing is started and MLflow builds the map in `log_model`, as it would anyway.)"""
    from mlflow.utils import requirements_utils

    build = getattr(requirements_utils, "_init_modules_to_packages_map", None)
    thread = threading.Thread(target=build or (lambda: None), name="installed-packages", daemon=True)
    thread.start()
    return thread


def log_model(model, examples, outputs, name="model", step=0, pixels=False):
    """Log the Keras model (named after its entry point) with its signature, an input
    example and pinned requirements.

    The signature's output side comes from `outputs` the model already predicted:
    another predict call here would cost a trace of the predict function. MLflow attaches
    the run's metrics at `step` to the model: the last epoch's, not the first's. A model
    of `pixels` takes float32 images at either scale (`pixel_input`): float32 in its
    signature, since a serving request is cast to the signature's type before the model sees it."""
    from pipelines import pixel_input  # Keras, as MLflow's Keras flavor imports it

    map_installed_packages().join()
    example = examples[:INPUT_EXAMPLE_ROWS].astype("float32") if pixels else examples[:INPUT_EXAMPLE_ROWS]
    backend = keras.backend.backend()
    requirements = [f"keras=={keras.__version__}"] + [
        f"{package}=={importlib.metadata.version(package)}" for package in BACKEND_PACKAGES.get(backend, [])
    ]
    return mlflow.models.Model.log(
        artifact_path=None,
        name=name,
        step=step,
        flavor=_KerasFlavor(pixels),
        flavor_name="mlflow.keras",
        model=model,
        signature=mlflow.models.infer_signature(example, outputs[:INPUT_EXAMPLE_ROWS]),
        input_example=example,
        metadata={"input": pixel_input.CONTRACT} if pixels else None,  # what the signature cannot say: the scale
        pip_requirements=requirements,
        # MLflow would reload the model and predict the example to check that it serves: a
        # second load and predict in every run. The test suite serves logged models instead.
        validate_serving_input=False,
    )


class _KerasFlavor:
    """`mlflow.keras`, but creating the model folder before the input example is written
    into it: MLflow 3.17's `mlflow.keras.log_model(input_example=...)` fails with
    FileNotFoundError otherwise (mlflow/mlflow#16183). A model of pixels loads as a pyfunc
    through `pixel_input`, copied into the model's own code folder."""

    def __init__(self, pixels):
        self.pixels = pixels

    def save_model(self, path, mlflow_model, validate_serving_input=None, **kwargs):  # Model.log passes its own on
        os.makedirs(path, exist_ok=True)
        mlflow.keras.save_model(path=path, mlflow_model=mlflow_model, **kwargs)
        if self.pixels:
            from pipelines import pixel_input

            os.makedirs(f"{path}/{PYFUNC_CODE_FOLDER}", exist_ok=True)
            shutil.copy(pixel_input.__file__, f"{path}/{PYFUNC_CODE_FOLDER}/")
            pyfunc = mlflow_model.flavors["python_function"]
            pyfunc |= {"loader_module": pixel_input.__name__.rpartition(".")[2], "code": PYFUNC_CODE_FOLDER}
            mlflow_model.save(f"{path}/MLmodel")


def log_figure(figure, artifact_file):
    mlflow.log_figure(figure, artifact_file)
    plt.close(figure)  # sweeps train many models in one process


# --- what a user sees first: run names, descriptions, an experiment of their own -------------


def name_in_experiment(task, variant):
    """What a training run's name starts with: in its task's experiment, the variant says which
    entry point it trained (`cnn_bn`), or the task's name when it has only one (`churn`)."""
    return task.name if len(task.variants) == 1 else variant


def run_name(name, params, defaults, prefix=None):
    """`<name>-<what differs>`: `name` (`name_in_experiment`), then the params a run sets
    beyond its entry point's `defaults`, in a few characters each (`churn-seed2`,
    `cnn-ep3-lr0.01`), so that runs can be told apart in the runs table, the compare header
    and every chart legend. `prefix` replaces `name` (a sweep trial: `<study>-trial-3`)."""
    parts = [prefix or name]
    for name, value in params.items():
        if name in NOT_IN_NAMES or (name in defaults and value == defaults[name]):
            continue
        short = SHORT_PARAM_NAMES.get(name, name)
        if isinstance(value, str):
            parts.append(value if name in ("optimizer", "lr_schedule") else f"{short}_{value}")
        elif isinstance(value, bool):
            parts.append(short if value else f"no_{short}")
        else:
            short += "_" if short[-1].isdigit() else ""  # l2_0.0005, not l20.0005
            parts.append(f"{short}{value:.3g}" if isinstance(value, float) else f"{short}{value}")
    return "-".join(parts)[:MAX_RUN_NAME]


def interval_text(interval):
    """'0.9919-0.9951' for (low, high), '' for None: short enough for a column of the runs table."""
    return "" if interval is None else f"{interval[0]:.4f}-{interval[1]:.4f}"


def headline(metrics, primary_metric, bold=False):
    """'test_accuracy 0.9937 (95% interval 0.9919 to 0.9951)': the test metric runs are ranked by."""
    value = metrics.get(primary_metric)
    if value is None:
        return "no test result"
    result = f"**{primary_metric} {value:.4f}**" if bold else f"{primary_metric} {value:.4f}"
    interval = schema.logged_interval(metrics, primary_metric)
    if interval is not None:
        result += f" (95% interval {interval[0]:.4f} to {interval[1]:.4f})"
    return result


def describe_training(entry_point, metrics, primary_metric, params, epochs, train_seconds, digests, history):
    """The Markdown paragraph a training run shows as its description: its result, epochs,
    training time and data digests, and where its figures are."""
    result = headline(metrics, primary_metric, bold=True)
    last_val = {name: values[-1] for name, values in history.items() if name.startswith("val_") and values}
    validation = ", ".join(f"{name} {value:.4f}" for name, value in sorted(last_val.items()))
    data = ", ".join(f"{context} `{digest}`" for context, digest in digests.items())
    return (
        f"{entry_point}: {result} on the test split after {epochs} epoch{'s' if epochs != 1 else ''} "
        f"({train_seconds:.1f} s of training; batch {params.get('batch_size')}, learning rate "
        f"{params.get('learning_rate'):g}, seed {params.get('seed')})"
        + (f"; last epoch {validation}" if validation else "")
        + f". Data digests: {data}. Figures: `{schema.FIGURES_FOLDER}/` (learning curves"
        + (", confusion matrix" if "test_accuracy" in metrics else "")
        + "); the model: `Models` tab."
    )


def run_link(experiment_id, run_id, text):
    """A Markdown link to a run that works in any MLflow UI showing the description (its routes are after `#`)."""
    return f"[{text}](#/experiments/{experiment_id}/runs/{run_id})"


def experiment_of_its_own(name, client=None):
    """The id of experiment `name`, created if need be, without making it the current one:
    promote runs live there, not among the training runs they would be taken for."""
    client = client or mlflow.MlflowClient()
    found = client.get_experiment_by_name(name)
    if found is None:
        try:
            return client.create_experiment(name)
        except mlflow.MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            found = client.get_experiment_by_name(name)  # created at the same moment by another command
    if found.lifecycle_stage == "deleted":
        client.restore_experiment(found.experiment_id)
    return found.experiment_id


# --- the comparison view each task's experiment opens on, and links to what a command made ----

UI_DEFAULT_URL = "http://127.0.0.1:5000"  # where `mlflow ui` serves
# One user's UI needs neither MLflow's GenAI job runner (some eight processes) nor four
# workers (benchmarks/commands.md).
UI_COMMAND = "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow ui --workers 1"
UI_WORKFLOW = "workflowType=machine_learning"  # the runs table, not MLflow 3's GenAI overview


def column(kind, name):
    """A runs-table column as the MLflow UI names it: metrics.`test_accuracy`."""
    return f"{kind}.`{name}`"


def comparison_view_key(task):
    return f"compare-{task.name}"


def comparison_view(task, charted=None):
    """The runs table a task's experiment opens on: its trainings with a test result (no
    sweep's, repeats' or workflow's own run), the headline test metric first with its 95%
    interval as one short column (`INTERVAL_TAG`), and the variant where the task has
    several; best first. The run names say what else differs. Its chart view opens on the
    headline charts, then one chart per other metric in `charted` ({name: "BAR" or "LINE"}),
    as the UI draws them (`charts`)."""
    metric = task.primary_metric
    columns = [column("metrics", metric), column("tags", schema.INTERVAL_TAG)]
    if len(task.variants) > 1:
        columns.append(column("tags", schema.VARIANT_TAG))
    cards, sections = charts(task, charted or {})
    return {
        "searchFilter": f"metrics.{metric} >= 0",
        "orderByKey": column("metrics", metric),
        "orderByAsc": task.kind == "regression",  # the lowest error first
        "selectedColumns": columns,
        # The UI applies widths only to the columns it is given an order for; those left out follow.
        "columnOrder": [RUN_NAME_COLUMN, *columns],
        "columnWidths": {RUN_NAME_COLUMN: RUN_NAME_WIDTH, **dict.fromkeys(columns, COLUMN_WIDTH)},
        "hideEmptyCharts": True,
        "compareRunCharts": cards,
        "compareRunSections": sections,
    }


RUN_NAME_COLUMN = column("attributes", "Run Name")
# Pixels: a run name, "test_accuracy" and "0.9919-0.9951" whole, where the UI's defaults cut them.
RUN_NAME_WIDTH, COLUMN_WIDTH = 260, 130
# The chart view's sections: the UI sorts those it did not name itself first, then its own two.
HEADLINE_SECTION, MODEL_SECTION, SYSTEM_SECTION = "Headline", "Model metrics", "System metrics"
BAR, LINE = "BAR", "LINE"  # a value per run; a value per epoch (or, for system metrics, per sample)


def headline_metrics(task):
    """{metric: chart type} of the charts a task's chart view opens on: the test metric and the
    training time per run, the validation metric and the loss per epoch."""
    validation = "val_loss" if task.kind == "regression" else "val_accuracy"
    return {task.primary_metric: BAR, schema.TRAIN_TIME_METRIC: BAR, validation: LINE, "loss": LINE}


def charts(task, charted):
    """(cards, sections) of the chart view, in the MLflow UI's own state format: the headline
    section first, then the model's and the system's metrics in `charted`, by name. Given them
    all, the UI draws exactly these: it adds none to a shared view."""
    headline = headline_metrics(task)
    others = {name: kind for name, kind in sorted(charted.items()) if name not in headline}
    sections = {HEADLINE_SECTION: headline}
    sections[MODEL_SECTION] = {n: k for n, k in others.items() if not n.startswith(schema.SYSTEM_METRIC_PREFIX)}
    sections[SYSTEM_SECTION] = {n: k for n, k in others.items() if n.startswith(schema.SYSTEM_METRIC_PREFIX)}
    cards, section_states = [], []
    for section, metrics in sections.items():
        if not metrics:
            continue
        uuid = f"{task.name}-{section}".replace(" ", "-")
        section_states.append({"uuid": uuid, "name": section, "display": True, "isReordered": False, "deleted": False})
        cards += [_card(name, kind, uuid) for name, kind in metrics.items()]
    return cards, section_states


def _card(metric, kind, section_uuid):
    """One chart as the UI's state holds it (its BAR and LINE card classes, their defaults)."""
    card = {
        "uuid": f"{section_uuid}-{metric}",
        "type": kind,
        "runsCountToCompare": 10,
        "metricSectionId": section_uuid,
        "deleted": False,
        "isGenerated": True,
        "metricKey": metric,
        "displayName": metric.rpartition("/")[2],
    }
    if kind == LINE:
        system = metric.startswith(schema.SYSTEM_METRIC_PREFIX)  # sampled in time, not per epoch
        card |= {
            "lineSmoothness": 0,
            "xAxisScaleType": "linear",
            "scaleType": "linear",
            "range": {},
            "xAxisKey": "time" if system else "step",
            "selectedXAxisMetricKey": "",
            "yAxisKey": "metric",
            "yAxisExpressions": [],
            "ignoreOutliers": False,
            "useGlobalXaxisKey": not system,
            "useGlobalLineSmoothing": True,
        }
    return card


def chart_types(metrics, per_epoch):
    """{metric: chart type} of a run's `metrics`: a line for those logged every epoch
    (`per_epoch`) and for the system metrics, a bar for the rest."""
    return {
        name: LINE if name in per_epoch or name.startswith(schema.SYSTEM_METRIC_PREFIX) else BAR for name in metrics
    }


def charted_metrics(state):
    """{metric: chart type} of the charts in a comparison view's state (JSON), or {}."""
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        return {card["metricKey"]: card["type"] for card in json.loads(state).get("compareRunCharts") or []}
    return {}


def share_comparison_view(experiment_id, task, client=None, run_metrics=None):
    """Keep the task's comparison view on its experiment, as MLflow's own shared view state
    (the tag `mlflow.sharedViewState.<key>`, the saved-view envelope of MLflow 3.17's UI):
    written when the experiment is first used, rewritten only when this project changes it or
    a run logs a metric it has no chart for (`run_metrics`, {metric: chart type}).
    A store that refuses the tag (a user who may log runs but not edit the experiment) costs
    only the view: a warning, and None for its key.
    """
    client = client or mlflow.MlflowClient()
    key = comparison_view_key(task)
    try:
        current = client.get_experiment(experiment_id).tags.get(schema.SHARED_VIEW_TAG_PREFIX + key)
        current_state = None
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            current_state = json.loads(current).get("state") if current else None
        charted = {**(run_metrics or {}), **charted_metrics(current_state)}
        state = json.dumps(comparison_view(task, charted), separators=(",", ":"))
        if current_state == state:
            return key
        now = int(time.time() * 1000)
        envelope = {"name": f"Compare {task.name} runs", "createdAt": now, "updatedAt": now, "state": state}
        client.set_experiment_tag(
            experiment_id, schema.SHARED_VIEW_TAG_PREFIX + key, json.dumps(envelope, separators=(",", ":"))
        )
    except mlflow.MlflowException as error:
        print(f"warning: the comparison view of {task.name} was not saved: {error.message}", file=sys.stderr)
        return None
    return key


def ui_base():
    """(the MLflow UI's URL, the command that serves it or ''): a tracking server's own URL, or
    `mlflow ui` over the store the runs went to."""
    uri = mlflow.get_tracking_uri()
    if uri.startswith(("http://", "https://")):
        return uri.rstrip("/"), ""
    if uri.startswith("sqlite:///"):
        path, _, query = uri.removeprefix("sqlite:///").partition("?")
        uri = "sqlite:///" + str(Path(path).resolve()) + (f"?{query}" if query else "")
    return UI_DEFAULT_URL, f"{UI_COMMAND} --backend-store-uri {uri}"


def experiment_url(experiment_id, view_key=None):
    """The experiment's runs table, in its comparison view when given the view's key."""
    url = f"{ui_base()[0]}/#/experiments/{experiment_id}/runs?{UI_WORKFLOW}"
    return f"{url}&viewStateShareKey={view_key}" if view_key else url


def run_url(experiment_id, run_id):
    return f"{ui_base()[0]}/#/experiments/{experiment_id}/runs/{run_id}?{UI_WORKFLOW}"


def model_url(name, version=None):
    return f"{ui_base()[0]}/#/models/{name}" + (f"/versions/{version}" if version else "")


def print_links(links):
    """`links` ({what: url}) to open in the MLflow UI, after the command that serves it when
    the store is embedded."""
    _, command = ui_base()
    print("open in the MLflow UI" + (f" (serve it first: {command})" if command else "") + ":")
    for what, url in links.items():
        print(f"  {what}: {url}")
