"""The whole loop in one command: sweep -> promote -> compare, each step its own MLflow run.

    mlflow run . -e workflow --env-manager local -P task=mnist_cnn -P n_trials=20

Like MLflow's multistep-workflow example, each step is launched as `mlflow.projects.run` launches it,
inside the workflow's run, so the steps' runs nest under it; each step's run is also
tagged with the run of the step before it.
"""

import contextlib
import os
import sys
from pathlib import Path

import lazy_loader as lazy

from experiments import RunFailed
from pipelines import registry, schema, tracking
from pipelines.sweeps import settings as sweep_settings

mlflow = lazy.load("mlflow")  # imported on first use: --help and a refused setting need none of it

PROJECT_DIR = Path(__file__).resolve().parents[1]
# The sweep's settings, then the promotion's gate; any other --name value fixes a training parameter.
PROMOTION_SETTINGS = ("margin", "gate", "alpha")
SETTINGS = {
    **{name: param for name, param in sweep_settings.SETTINGS.items() if name != "dry_run"},
    **{name: registry.SETTINGS[name] for name in PROMOTION_SETTINGS},
}
COMMAND_ONLY = ("task", "variant", "experiment", *PROMOTION_SETTINGS)  # not passed on to the sweep step as such


class StepFailed(RunFailed):
    """A step's run ended FAILED or KILLED: the workflow stops there."""


def run_workflow(task, variant, settings, training_overrides, params=None):
    """Run the three steps for one entry point; return {step: run id}.

    `training_overrides` ({name: text}) fix training parameters (`data`, ...) for every trial;
    `params` are the entry point's parameters with them applied (parsed from them if not given).
    Everything the sweep would refuse is refused here first, before any experiment, run or step
    exists: the search space, the storage (it must answer) and the data.
    """
    from pipelines.data import prepare_data
    from pipelines.params import parse_params
    from pipelines.sweeps import plan, storage

    entry_point = task.qualified_name(variant)
    if params is None:
        params = parse_params(task, variant, training_overrides)
    plan.checked_space(task, variant, settings, params, fixed_by_user=set(training_overrides))
    prepare_data(task, variant, params)  # a missing or corrupt data file: one line now, not a failed step
    # A password reaches the sweep step in its environment (PGPASSWORD), never as a -P value:
    # MLflow logs every -P value as a param of the step's run and prints its command line.
    step_storage, password = storage.split_password(settings["storage"])
    if password and os.environ.get("MLFLOW_RUN_ID"):
        print(
            "warning: mlflow run logged -P storage as given, password included; "
            "pass the password in PGPASSWORD (or ~/.pgpass) instead",
            file=sys.stderr,
        )
    study = settings["study_name"] or entry_point
    sweep = {name: value for name, value in settings.items() if name not in COMMAND_ONLY}
    steps = [
        ("sweep", {"task": entry_point, **sweep, "storage": step_storage, "study_name": study, **training_overrides}),
        ("promote", {"task": entry_point, "study": study, **{name: settings[name] for name in PROMOTION_SETTINGS}}),
        ("compare", {"model": entry_point}),
    ]
    experiment_id = tracking.use_experiment(settings["experiment"], task.name)
    # `mlflow run` refuses MLFLOW_EXPERIMENT_NAME beside the MLFLOW_EXPERIMENT_ID it is given for each step.
    environment = {"MLFLOW_EXPERIMENT_NAME": None, **({"PGPASSWORD": password} if password else {})}
    with _environment(environment):
        return _run_steps(task, variant, experiment_id, entry_point, steps)


@contextlib.contextmanager
def _environment(values):
    """os.environ, which the steps' processes inherit, with `values` set (None: unset) while inside."""
    saved = {name: os.environ.get(name) for name in values}

    def apply(changes):
        for name, value in changes.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    apply(values)
    try:
        yield
    finally:
        apply(saved)


def _run_steps(task, variant, experiment_id, entry_point, steps):
    from pipelines.compare import DEFAULT_EXPERIMENT as COMPARE_EXPERIMENT
    from pipelines.sweeps import storage

    client = mlflow.MlflowClient()
    run_ids = {}
    # The promote and compare steps' runs go where those commands put theirs: not among the trainings.
    own_experiments = {"promote": registry.PROMOTE_EXPERIMENT, "compare": COMPARE_EXPERIMENT}
    tags = {
        schema.TASK_TAG: task.name,
        schema.VARIANT_TAG: variant,
        schema.MODEL_TAG: entry_point,
        schema.STEP_TAG: schema.WORKFLOW_STEP,
    }
    # The workflow's run waits on its steps, whose runs sample their own system metrics.
    with tracking.mlflow_run(f"workflow-{entry_point}", tags, system_metrics_interval=0):
        for step, parameters in steps:
            shown = {name: storage.describe(v) if name == "storage" and v else v for name, v in parameters.items()}
            print(
                f"workflow step {step}: mlflow run . -e {step} " + " ".join(f"-P {k}={v}" for k, v in shown.items()),
                flush=True,
            )
            own = own_experiments.get(step)
            submitted = start_step(step, parameters, tracking.experiment_of_its_own(own) if own else experiment_id)
            wait_for_step(step, submitted, client)
            if run_ids:
                previous_step = list(run_ids)[-1]
                client.set_tag(submitted.run_id, schema.workflow_step_tag(previous_step), run_ids[previous_step])
            run_ids[step] = submitted.run_id
            mlflow.set_tag(schema.workflow_step_tag(step), submitted.run_id)
    print(f"workflow {entry_point} finished: " + ", ".join(f"{step} run {run_id}" for step, run_id in run_ids.items()))
    for line in registry.serving_commands(f"models:/{entry_point}@{registry.CHAMPION}"):
        print(line)
    return run_ids


def start_step(step, parameters, experiment_id):
    """Start a step as `mlflow.projects.run` does (its run, params and tags, nested under the
    active run) and return its SubmittedRun without waiting for it. Asked to be synchronous,
    MLflow's local backend starts the step's command itself, and `mlflow.projects.run` then
    waits, marking a step stopped by Ctrl-C FAILED; asked not to be, the backend starts an
    `mlflow run` process to start the command (seconds of imports for each step)."""
    from mlflow.projects import utils
    from mlflow.projects.backend import loader
    from mlflow.utils.mlflow_tags import MLFLOW_PROJECT_BACKEND

    backend_config = {
        utils.PROJECT_ENV_MANAGER: "local",
        utils.PROJECT_SYNCHRONOUS: True,
        utils.PROJECT_DOCKER_ARGS: None,
        utils.PROJECT_STORAGE_DIR: None,
        utils.PROJECT_BUILD_IMAGE: False,
        utils.PROJECT_DOCKER_AUTH: None,
    }
    tracking_uri = mlflow.get_tracking_uri()
    submitted = loader.load_backend("local").run(
        str(PROJECT_DIR), step, parameters, None, backend_config, tracking_uri, experiment_id
    )
    mlflow.MlflowClient().set_tag(submitted.run_id, MLFLOW_PROJECT_BACKEND, "local")  # as mlflow.projects.run tags it
    return submitted


def wait_for_step(step, submitted, client):
    """Wait for a step's process. The step ends its own run; a run it left RUNNING (it died)
    is ended here, KILLED if the workflow was stopped. (MLflow's own wait would end it FAILED.)"""
    try:
        succeeded = submitted.wait()
    except KeyboardInterrupt:
        submitted.cancel()  # SIGTERM to the step, then wait for it
        _end_if_running(client, submitted.run_id, "KILLED")
        raise
    if not succeeded:
        status = _end_if_running(client, submitted.run_id, "FAILED")
        raise StepFailed(f"{step}: the step failed (run {submitted.run_id} ended {status}); its run's logs say why")


def _end_if_running(client, run_id, status):
    current = client.get_run(run_id).info.status
    if current == "RUNNING":
        client.set_terminated(run_id, status)
        return status
    return current
