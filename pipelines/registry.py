"""Promote a trained run to the MLflow model registry, gated by its held-out test metric.

    python -m pipelines promote --task mnist_cnn [--study NAME | --run_id ID] [--margin 0.001]

The run becomes a version of the registered model named after its entry point and
gets the alias `challenger`. The alias `champion` moves to it only when it beats the
current champion on the same test data by more than `margin`. Promotions of one model
are serialized by a lock, so that racing promotions lose no version and never leave a
worse champion behind.
"""

from __future__ import annotations  # annotations name MLflow's types without importing MLflow

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

import lazy_loader as lazy
from filelock import FileLock

from experiments import InputError, Param, resolve
from pipelines import tracking
from pipelines.params import ENTRY_POINT_SETTINGS, NAME_PATTERN

mlflow = lazy.load("mlflow")  # imported on first use: --help and a refused setting need none of it

CHAMPION, CHALLENGER = "champion", "challenger"
SETTINGS = {
    **ENTRY_POINT_SETTINGS,
    "experiment": Param(str, "", "search only this MLflow experiment and log the promote run there; empty: search all"),
    "run_id": Param(str, "", "promote this run; empty: the best run", pattern="[0-9a-zA-Z]*"),
    "study": Param(str, "", "promote the best trial of this sweep; empty: the best run of any", pattern=NAME_PATTERN),
    "margin": Param(float, 0.0, "how much better than the champion a run must be", ge=0),
}


@dataclass(frozen=True)
class Candidate:
    """A finished run with its test metric and its logged model."""

    run: mlflow.entities.Run
    model_id: str
    metric: str
    value: float


@dataclass(frozen=True)
class Decision:
    version: str
    champion: str | None  # the champion's version after this promotion
    promoted: bool  # True: the new version became champion now
    reason: str

    @property
    def outcome(self):
        """What the version is after the promotion: champion or challenger."""
        return CHAMPION if self.champion == self.version else CHALLENGER


def is_better(task, value, than, margin):
    """True when `value` beats `than` by more than `margin` on the task's primary metric."""
    gain = than - value if task.kind == "regression" else value - than  # regression: lower MSE wins
    return gain > margin


# --- choosing the run ------------------------------------------------------------------


def find_candidate(task, variant, run_id="", study="", experiment_ids=None):
    """The run to promote: the given run, or the best finished run of the entry point (or of one sweep)."""
    entry_point = task.qualified_name(variant)
    metric = task.primary_metric
    client = mlflow.MlflowClient()
    if run_id:
        try:
            run = client.get_run(run_id)
        except mlflow.MlflowException:
            raise InputError(f"run_id: no run {run_id} in the tracking store {mlflow.get_tracking_uri()}") from None
        if run.data.tags.get("entry_point") != entry_point:
            raise InputError(
                f"run_id: run {run_id} trained {run.data.tags.get('entry_point', 'no entry point')}, not {entry_point}"
            )
        return _candidate(run, metric)
    query = f"tags.entry_point = '{entry_point}' AND attributes.status = 'FINISHED'"
    if study:
        query += f" AND tags.`optuna.study_name` = '{study}' AND tags.sweep = 'trial'"
    order = "ASC" if task.kind == "regression" else "DESC"
    found = mlflow.search_runs(
        experiment_ids=experiment_ids,
        search_all_experiments=experiment_ids is None,
        filter_string=query,
        order_by=[f"metrics.{metric} {order}"],
        output_format="list",
    )
    found = [run for run in found if metric in run.data.metrics]
    where = f"sweep '{study}'" if study else "the tracking store"
    if not found:
        raise InputError(f"{'study' if study else 'task'}: no finished run of {entry_point} with {metric} in {where}")
    return _candidate(found[0], metric)


def _candidate(run, metric):
    run_id = run.info.run_id
    if metric not in run.data.metrics:
        raise InputError(f"run_id: run {run_id} has no {metric} metric (status {run.info.status})")
    models = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'", output_format="list"
    )
    ready = [model for model in models if model.status == mlflow.entities.LoggedModelStatus.READY]
    if not ready:
        raise InputError(f"run_id: run {run_id} has no logged model (its model failed to log)")
    latest = max(ready, key=lambda model: model.creation_timestamp)  # a resumed run logged one more
    return Candidate(run, latest.model_id, metric, run.data.metrics[metric])


# --- registering and gating -------------------------------------------------------------


def promote(task, variant, candidate, margin):
    """Register `candidate` (once) as a version of the entry point's model; move the aliases."""
    name = task.qualified_name(variant)
    client = mlflow.MlflowClient()
    with promotion_lock(name):
        version = _existing_version(client, name, candidate.run.info.run_id)
        if version is None:
            version = str(
                mlflow.register_model(f"models:/{candidate.model_id}", name, tags=lineage_tags(candidate)).version
            )
        else:
            print(f"run {candidate.run.info.run_id} is already version {version} of {name}: not registered again")
        champion = _current(client, name, CHAMPION)
        decision = _gate(task, candidate, version, champion, margin)
        client.set_registered_model_alias(name, CHALLENGER, version)
        if decision.promoted:
            client.set_registered_model_alias(name, CHAMPION, version)
        client.set_model_version_tag(name, version, "promotion.decision", decision.outcome)
        client.set_model_version_tag(name, version, "promotion.reason", decision.reason)
    return decision


def lineage_tags(candidate):
    """What a version carries to find its run, sweep, data and code."""
    tags = candidate.run.data.tags
    lineage = {
        "source_run_id": candidate.run.info.run_id,
        "metric": candidate.metric,
        "metric_value": f"{candidate.value:.6g}",
        "dataset_digest": tags.get("dataset_digest", ""),
        "test_dataset_digest": test_digest(candidate.run),
        "git_commit": tags.get(tracking.GIT_COMMIT_TAG, "unknown"),
    }
    if "optuna.study_name" in tags:
        lineage["study"] = tags["optuna.study_name"]
        lineage["sweep_run_id"] = tags.get("mlflow.parentRunId", "")
        lineage["trial_number"] = tags.get("optuna.trial_number", "")
    return lineage


def test_digest(run):
    """The digest of the test split the run was evaluated on (logged as a dataset input)."""
    for dataset_input in run.inputs.dataset_inputs:
        if {tag.key: tag.value for tag in dataset_input.tags}.get("mlflow.data.context") == "test":
            return dataset_input.dataset.digest
    return ""


def _existing_version(client, name, run_id):
    try:
        versions = client.search_model_versions(f"name = '{name}' AND run_id = '{run_id}'")
    except mlflow.MlflowException:
        return None
    return min((str(v.version) for v in versions), key=int, default=None)


def _current(client, name, alias):
    try:
        return client.get_model_version_by_alias(name, alias)
    except mlflow.MlflowException:
        return None


def _gate(task, candidate, version, champion, margin):
    metric, value = candidate.metric, candidate.value
    if champion is None:
        return Decision(version, version, True, f"no champion yet; {metric} {value:.4f}")
    if str(champion.version) == version:
        return Decision(version, version, False, f"version {version} is already the champion; {metric} {value:.4f}")
    champion_value, same_data = _champion_value(task, champion, candidate)
    verdict = (
        f"{metric} {value:.4f} against champion version {champion.version}'s {champion_value:.4f} (margin {margin:g})"
    )
    if not same_data:
        verdict += "; the champion was evaluated again on this run's test data"
    if is_better(task, value, champion_value, margin):
        return Decision(version, version, True, f"promoted: {verdict}")
    return Decision(version, champion.version, False, f"kept the champion: {verdict}")


def _champion_value(task, champion, candidate):
    """(value, same data): the champion's metric on the candidate's test data: its logged value
    when both ran on the same test split, else the champion evaluated again on the candidate's split."""
    champion_run = mlflow.MlflowClient().get_run(champion.run_id)
    if test_digest(champion_run) == test_digest(candidate.run) and candidate.metric in champion_run.data.metrics:
        return champion_run.data.metrics[candidate.metric], True
    return evaluate_on(task, candidate.run, f"models:/{champion.name}/{champion.version}")[candidate.metric], False


def evaluate_on(task, run, model_uri):
    """Test metrics of `model_uri` on the test split that `run` was evaluated on."""
    from pipelines.train import evaluate_model

    data = run.data.params.get("data") or None
    splits = task.load(Path(data) if data else None, int(run.data.params.get("seed", 0)))
    variant = run.data.tags["variant"]
    metrics, _, _ = evaluate_model(mlflow.keras.load_model(model_uri), task, variant, splits)
    return metrics


def promotion_lock(name):
    """One promotion of `name` at a time on this machine (a file lock beside a SQLite store)."""
    uri = mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///")).with_suffix(f".promote-{name}.lock")
    else:
        digest = hashlib.sha256(uri.encode()).hexdigest()[:16]
        path = Path(tempfile.gettempdir()) / f"mlflow-promote-{digest}-{name}.lock"
    return FileLock(path, is_singleton=True)  # one lock per file: re-entrant within a thread


# --- the promote command ----------------------------------------------------------------


def run_promotion(task, variant="", run_id="", study="", margin=0.0, experiment=""):
    """Pick, register and gate a run of `task` (a task or entry point name) inside a
    `promote-<model>` MLflow run; print the decision."""
    task, variant = resolve(task, variant)
    if run_id and study:
        raise InputError("run_id: give run_id or study, not both")
    experiment_ids = None  # every experiment
    if experiment:
        found = mlflow.MlflowClient().get_experiment_by_name(experiment)
        if found is None:
            raise InputError(f"experiment: no experiment named '{experiment}'")
        experiment_ids = [found.experiment_id]
    candidate = find_candidate(task, variant, run_id, study, experiment_ids)
    name = task.qualified_name(variant)
    tracking.use_experiment(experiment, task.name)
    # No `entry_point` tag: a promote run must never be taken for a training run.
    tags = {"task": task.name, "variant": variant, "model": name, "step": "promote"}
    selection = f"run {run_id}" if run_id else f"best of sweep {study}" if study else "best run"
    with tracking.mlflow_run(run_name=f"promote-{name}", tags=tags) as run:
        mlflow.log_params(
            {"model": name, "margin": margin, "source_run_id": candidate.run.info.run_id, "selection": selection}
        )
        decision = promote(task, variant, candidate, margin)
        mlflow.log_metric(candidate.metric, candidate.value)
        mlflow.set_tags(
            {
                "model_version": decision.version,
                "champion_version": decision.champion,
                "promotion.decision": decision.outcome,
                "promotion.reason": decision.reason,
            }
        )
    print(
        f"{name} version {decision.version} (run {candidate.run.info.run_id}, {candidate.metric} {candidate.value:.4f})"
    )
    print(f"{CHAMPION}: version {decision.champion}; {decision.reason}")
    print(f"serve it: mlflow models serve -m models:/{name}@{CHAMPION} --env-manager local")
    return decision, run.info.run_id
