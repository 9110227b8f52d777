"""Resuming a run from its last checkpoint (`--resume <run id>`), and what resuming refuses.

The run goes on under its own id: back to RUNNING, its per-epoch metrics continuing at
the next step, then FINISHED, FAILED or KILLED as any run. A run stopped before its first
checkpoint trains again from the start. Resuming keeps the run's recipe: the run id alone
names the entry point and every parameter, and a parameter given must be the one the run
was trained with, except `epochs`, which may be raised to train a run further, a finished
one included. The data is compared by content (the splits' digests), not by path, so
another machine can resume with its own copy of it (`data`).

Two resumes of one run never both train it. Each claims the run before it trains, with a
param `resume.claim.<n>`: MLflow never lets a param change once logged, in the store's own
transaction, so of two resumes that read the run in the same state, only one can log claim
n. A claim whose process may still be starting the run stops later resumes too.
"""

import os
import shlex
import socket
import time
from dataclasses import dataclass

import mlflow
from mlflow.exceptions import MlflowException

from experiments import InputError, resolve
from pipelines import checkpoints, liveness, schema
from pipelines.params import declared_params

NOT_COMPARED = ("epochs", "data")  # epochs may be raised; the data is compared by its digests


@dataclass(frozen=True)
class Resumption:
    """How run `run_id` goes on: from `checkpoint`, or from the start when it has none."""

    run_id: str
    checkpoint: checkpoints.Checkpoint | None
    run_folders: tuple  # the checkpoint folders the run holds: a resumed training deletes the older ones
    was_finished: bool  # a FINISHED run trained further keeps the models it logged then


def experiment_of(run_id, requested):
    """Make the experiment of run `run_id` the current one, and return its id: a resumed run
    stays where it is. An `experiment` setting that names another is refused."""
    run = _read_run(run_id)
    experiment = mlflow.MlflowClient().get_experiment(run.info.experiment_id)
    if requested and requested != experiment.name:
        raise InputError(f"experiment: run {run_id} is in experiment '{experiment.name}', not '{requested}'")
    from pipelines.tracking import leave_launch

    leave_launch()  # under `mlflow run`, its run stays where it is and points to this one
    mlflow.set_experiment(experiment_id=experiment.experiment_id)
    return experiment.experiment_id


def entry_point_of(run_id):
    """(task, variant) that run `run_id` trained: what `--resume <id>` goes on with when no task is given."""
    entry_point = schema.trained_entry_point(_read_run(run_id).data.tags)
    if not entry_point:
        raise InputError(
            f"resume: run {run_id} is not a training of this project (it has no {schema.ENTRY_POINT_TAG} tag)"
        )
    return resolve(entry_point)


def own_params(run_id, task, variant, given):
    """{name: text} of the parameters run `run_id` trained with, `given` ({name: text}) applied:
    what a resumed training takes. The epochs are the ones it was last asked for.

    `mlflow run` passes every parameter of an entry point, so under it a value equal to the
    entry point's default is taken for one the user did not give."""
    declared, run = declared_params(task, variant), _read_run(run_id)
    if schema.trained_entry_point(run.data.tags) != task.qualified_name(variant):
        return given  # not this entry point's run: `resumption_of` says so
    texts = {name: value for name, value in run.data.params.items() if name in declared}
    if schema.PROJECT_ENTRY_POINT_TAG in run.data.tags:  # `mlflow run` logged its values shell-quoted: '' for empty
        texts = {name: shlex.split(value)[0] if value else value for name, value in texts.items()}
    if schema.RESUME_EPOCHS_TAG in run.data.tags:
        texts["epochs"] = run.data.tags[schema.RESUME_EPOCHS_TAG]
    if os.environ.get("MLFLOW_RUN_ID"):
        given = {
            name: text for name, text in given.items() if declared[name].parse(name, text) != declared[name].default
        }
    return {**texts, **given}


def _read_run(run_id):
    from pipelines.tracking import open_store

    open_store()
    return _get_run(mlflow.MlflowClient(), run_id)


def _get_run(client, run_id):
    try:
        return client.get_run(run_id)
    except MlflowException:
        raise InputError(f"resume: no run {run_id} in the tracking store {mlflow.get_tracking_uri()}") from None


def resumption_of(run_id, task, variant, params, digests):
    """How to resume `run_id` with `params`, with the run claimed for this process; or one
    InputError that says why it can't be, with the run unchanged."""
    client = mlflow.MlflowClient()
    run = _get_run(client, run_id)  # one reading: every check and the claim's number come from it
    entry_point, tags = task.qualified_name(variant), run.data.tags
    if run.info.lifecycle_stage != "active":
        raise InputError(f"resume: run {run_id} is deleted")
    trained = schema.trained_entry_point(tags)
    if trained != entry_point:
        raise InputError(f"resume: run {run_id} trained {trained or 'no entry point'}, not {entry_point}")
    if schema.is_trial(tags):
        raise InputError(
            f"resume: run {run_id} is a trial of sweep {schema.study_of(tags)}; "
            "run the sweep again, which retries it from its checkpoint"
        )
    stale_after = liveness.SETTINGS["stale_after"].default
    if run.info.status == "RUNNING":
        why = liveness.staleness(run, stale_after, liveness.now())
        if why is None:
            process = schema.process_of(tags) or schema.RunProcess("?", "?", "", "none")
            raise InputError(
                f"resume: run {run_id} is RUNNING, its process {process.pid or '?'} on {process.host or '?'} "
                f"alive (heartbeat {process.heartbeat}); stop it first"
            )
    holder = _live_claim(run, stale_after)
    if holder:
        raise InputError(f"resume: run {run_id} is being resumed by {holder}; wait for it, or stop it first")
    _check_recipe(run, task, variant, params)
    _check_data(run, digests)
    checkpoint = checkpoints.latest(run_id)
    done = checkpoint.epoch if checkpoint else 0
    if run.info.status == "FINISHED" and params["epochs"] <= done:
        raise InputError(f"epochs: run {run_id} FINISHED its {done} epochs; give more epochs to train it further")
    if params["epochs"] < done:
        raise InputError(f"epochs: run {run_id} has trained {done} epochs already; give at least that many")
    _claim(client, run)
    return Resumption(run_id, checkpoint, checkpoints.run_folders(run_id), run.info.status == "FINISHED")


def _claims(run):
    """[(n, value)] of the run's resume claims, in order."""
    found = []
    for key, value in run.data.params.items():
        number = key.removeprefix(schema.RESUME_CLAIM_PARAM_PREFIX)
        if key.startswith(schema.RESUME_CLAIM_PARAM_PREFIX) and number.isdigit():
            found.append((int(number), value))
    return sorted(found)


def _live_claim(run, stale_after):
    """Who holds the run's latest claim while that resume may still be starting it, or None.

    A claim is over once the run has ended after it, or once its process is gone: on this
    host its process tells, on another host only time does (`stale_after`)."""
    claims = _claims(run)
    if not claims:
        return None
    try:
        host, pid, started, claimed_at = claims[-1][1].split()
        claimed_at = int(claimed_at)
    except ValueError:
        return None  # not a claim this project wrote
    if run.info.status != "RUNNING" and (run.info.end_time or 0) >= claimed_at:
        return None
    holder = f"process {pid} on {host} (param {schema.RESUME_CLAIM_PARAM_PREFIX}{claims[-1][0]})"
    if host == socket.gethostname():
        return holder if liveness.same_process_alive(pid, started) else None
    return holder if time.time() * 1000 - claimed_at < stale_after * 1000 else None


def _claim(client, run):
    """Log this process's claim on `run`, numbered after the claims the run held when it was
    read; refused in one line if another resume logged that number first."""
    claims = _claims(run)
    key = f"{schema.RESUME_CLAIM_PARAM_PREFIX}{claims[-1][0] + 1 if claims else 1}"
    process = liveness.this_process()
    value = f"{process.host} {process.pid} {process.started} {int(time.time() * 1000)}"
    try:
        client.log_param(run.info.run_id, key, value)
    except MlflowException as error:
        if error.error_code != "INVALID_PARAMETER_VALUE":
            raise
        winner = client.get_run(run.info.run_id).data.params.get(key, "?").split()
        who = f"process {winner[1]} on {winner[0]}" if len(winner) == 4 else "another process"
        raise InputError(
            f"resume: run {run.info.run_id} is being resumed by {who} (param {key}); wait for it, or stop it first"
        ) from None


def _check_recipe(run, task, variant, params):
    logged = run.data.params
    for name, param in declared_params(task, variant).items():
        if name in NOT_COMPARED or name not in logged:  # not logged: a parameter added since
            continue
        then = param.parse(name, logged[name])
        if then != params[name]:
            raise InputError(
                f"{name}: run {run.info.run_id} was trained with {name}={then}, not {params[name]}; "
                "a resumed run keeps its parameters (only epochs may be raised)"
            )


def _check_data(run, digests):
    logged = {}
    for dataset_input in run.inputs.dataset_inputs:
        logged[schema.dataset_context(dataset_input)] = dataset_input.dataset.digest
    for context, digest in digests.items():
        if context in logged and logged[context] != digest:
            raise InputError(
                f"data: the {context} split differs from the one run {run.info.run_id} was trained on "
                f"(digest {digest}, the run's {logged[context]})"
            )


def discard_earlier_models(resumption, model_id):
    """Delete the models an interrupted attempt of the run logged, but `model_id` and any a
    registry version uses: the run ends with one model. A run that had FINISHED keeps them."""
    if resumption.was_finished:
        return
    client = mlflow.MlflowClient()
    run_id = resumption.run_id
    registered = {version.model_id for version in client.search_model_versions(f"run_id = '{run_id}'")}
    experiment_id = client.get_run(run_id).info.experiment_id
    for model in client.search_logged_models([experiment_id], filter_string=f"source_run_id = '{run_id}'"):
        if model.model_id != model_id and model.model_id not in registered:
            client.delete_logged_model(model.model_id)
