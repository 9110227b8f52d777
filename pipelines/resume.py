"""Resuming a run from its last checkpoint (`--resume <run id>`), and what resuming refuses.

The run goes on under its own id: back to RUNNING, its per-epoch metrics continuing at
the next step, then FINISHED, FAILED or KILLED as any run. Resuming keeps the run's recipe:
every parameter must be the one it was trained with, except `epochs`, which may be raised
to train a run further, a finished one included. The data is compared by content (the
splits' digests), not by path, so another machine can resume with its own copy of it.
"""

from dataclasses import dataclass

import mlflow
from mlflow.exceptions import MlflowException

from experiments import InputError
from pipelines import checkpoints, liveness
from pipelines.params import declared_params

RESUMABLE = ("KILLED", "FAILED", "RUNNING", "FINISHED")  # RUNNING only once its process is gone
NOT_COMPARED = ("epochs", "data")  # epochs may be raised; the data is compared by its digests
FROM_EPOCH_TAG, EPOCHS_TAG, RESUMED_TAG = "resume.from_epoch", "resume.epochs", "resume.run_id"


@dataclass(frozen=True)
class Resumption:
    """Where a training starts from: `checkpoint`, continuing its run (`same_run`) or a new one."""

    checkpoint: checkpoints.Checkpoint
    same_run: bool

    @property
    def run_id(self):
        return self.checkpoint.run_id


def plan(run_id, task, variant, params, digests):
    """How to resume `run_id` with `params`, or one InputError that says why it can't be."""
    try:
        run = mlflow.MlflowClient().get_run(run_id)
    except MlflowException:
        raise InputError(f"resume: no run {run_id} in the tracking store {mlflow.get_tracking_uri()}") from None
    entry_point, tags = task.qualified_name(variant), run.data.tags
    if run.info.lifecycle_stage != "active":
        raise InputError(f"resume: run {run_id} is deleted")
    if tags.get("entry_point") != entry_point:
        raise InputError(f"resume: run {run_id} trained {tags.get('entry_point', 'no entry point')}, not {entry_point}")
    if tags.get("sweep") == "trial":
        raise InputError(
            f"resume: run {run_id} is a trial of sweep {tags.get('optuna.study_name')}; "
            "run the sweep again, which retries it from its checkpoint"
        )
    if run.info.status == "RUNNING":
        why = liveness.staleness(run, liveness.SETTINGS["stale_after"].default, liveness.now())
        if why is None:
            raise InputError(
                f"resume: run {run_id} is RUNNING, its process {tags.get(liveness.PID_TAG, '?')} on "
                f"{tags.get(liveness.HOST_TAG, '?')} alive (heartbeat {tags.get(liveness.HEARTBEAT_TAG, 'none')}); "
                "stop it first"
            )
    _check_recipe(run, task, variant, params)
    _check_data(run, digests)
    checkpoint = checkpoints.latest(run_id)
    if checkpoint is None:
        raise InputError(f"resume: run {run_id} has no checkpoint to resume from")
    if run.info.status == "FINISHED" and params["epochs"] <= checkpoint.epoch:
        raise InputError(
            f"epochs: run {run_id} FINISHED its {checkpoint.epoch} epochs; give more epochs to train it further"
        )
    if params["epochs"] < checkpoint.epoch:
        raise InputError(f"epochs: run {run_id} has trained {checkpoint.epoch} epochs already; give at least that many")
    return Resumption(checkpoint, same_run=True)


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
        context = {tag.key: tag.value for tag in dataset_input.tags}.get("mlflow.data.context")
        logged[context] = dataset_input.dataset.digest
    for context, digest in digests.items():
        if context in logged and logged[context] != digest:
            raise InputError(
                f"data: the {context} split differs from the one run {run.info.run_id} was trained on "
                f"(digest {digest}, the run's {logged[context]})"
            )
