"""Promote a trained run to the MLflow model registry, gated by its held-out test metric.

    python -m pipelines promote --task mnist_cnn [--study NAME | --run_id ID] [--margin 0.001]
                                [--gate paired|margin] [--alpha 0.05]

The run becomes a version of the registered model named after its entry point and
gets the alias `challenger`. The alias `champion` moves to it only when it beats the
current champion on the same test data by more than `margin` and, with `gate=paired`
(the default), significantly: McNemar's exact test on the test examples the two
classifiers disagree on (a paired bootstrap of the squared errors for a regression),
p < `alpha`, from the test predictions each run logged. Promotions of one model
are serialized by a lock, so that racing promotions lose no version and never leave a
worse champion behind. A seed-repeats parent run stands for its median seed's run.
"""

from __future__ import annotations  # annotations name MLflow's types without importing MLflow

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import lazy_loader as lazy
import numpy as np
from filelock import FileLock

from experiments import InputError, Param, resolve
from pipelines import schema, significance, tracking
from pipelines.params import ENTRY_POINT_SETTINGS, MAX_EXPERIMENT_NAME, NAME_PATTERN

mlflow = lazy.load("mlflow")  # imported on first use: --help and a refused setting need none of it

CHAMPION, CHALLENGER = "champion", "challenger"
PAIRED, MARGIN = "paired", "margin"
PROMOTION_TAG = schema.PROMOTION_TAGS  # by what it holds: PROMOTION_TAG["gate"]
GATES = (PAIRED, MARGIN)
# Promote runs live here, not among the training runs (in whose tables and charts they would
# pass for models): the runs `mlflow run` creates stay in the experiment it chose.
PROMOTE_EXPERIMENT = "promotions"
SERVING_ADDRESS = "127.0.0.1:5001"  # beside the MLflow UI, which takes port 5000
SETTINGS = {
    **ENTRY_POINT_SETTINGS,
    "experiment": Param(
        str,
        "",
        f"search only this MLflow experiment; empty: search all (the promote run goes to '{PROMOTE_EXPERIMENT}')",
        max_length=MAX_EXPERIMENT_NAME,
    ),
    "run_id": Param(str, "", "promote this run; empty: the best run", pattern="[0-9a-zA-Z]*"),
    "study": Param(str, "", "promote the best trial of this sweep; empty: the best run of any", pattern=NAME_PATTERN),
    "margin": Param(float, 0.0, "how much better than the champion a run must be", ge=0),
    "gate": Param(
        str,
        PAIRED,
        "paired: the champion moves only on a win by more than margin that is significant on the same test "
        "examples (McNemar's exact test; a paired bootstrap for regression); margin: on any win by more than margin",
        choices=GATES,
    ),
    "alpha": Param(float, 0.05, "the paired gate's significance level: a win counts when p < alpha", gt=0, lt=1),
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
    evidence: dict = field(default_factory=dict)  # promotion.* tags: the gate, its test, counts, p-value, intervals
    interval: tuple | None = None  # the version's 95% interval of its metric (low, high), where known

    @property
    def outcome(self):
        """What the version is after the promotion: champion or challenger."""
        return CHAMPION if self.champion == self.version else CHALLENGER


def is_better(task, value, than, margin):
    """True when `value` beats `than` by more than `margin` on the task's primary metric."""
    gain = than - value if task.kind == "regression" else value - than  # regression: lower MSE wins
    return gain > margin


# --- choosing the run ------------------------------------------------------------------


def find_candidate(task, variant, run_id, study, experiment_ids=None):
    """The run to promote: the given run, or the best finished run of the entry point (or of one sweep)."""
    entry_point = task.qualified_name(variant)
    metric = task.primary_metric
    client = mlflow.MlflowClient()
    if run_id:
        try:
            run = client.get_run(run_id)
        except mlflow.MlflowException:
            raise InputError(f"run_id: no run {run_id} in the tracking store {mlflow.get_tracking_uri()}") from None
        median = schema.repeats_median_run(run.data.tags)
        if median:  # a seed-repeats parent stands for its median seed's run
            seeds = run.data.tags.get(schema.REPEAT_COUNT_TAG)
            print(f"run {run_id} repeats {seeds} seeds: its median seed's run {median}")
            run = client.get_run(median)
        trained = schema.trained_entry_point(run.data.tags)
        if trained != entry_point:
            raise InputError(f"run_id: run {run_id} trained {trained or 'no entry point'}, not {entry_point}")
        return _candidate(run, metric)
    query = schema.trainings_filter(entry_point)
    if study:
        query += f" AND {schema.trials_filter(study)}"
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


def promote(task, variant, candidate, margin, gate, alpha, evidence=None):
    """Register `candidate` (once) as a version of the entry point's model; move the aliases.

    The evidence against the champion (`weigh`) is gathered before anything is registered, so
    a challenger that cannot be paired with the champion is refused with nothing changed;
    `run_promotion` gathers it first, under the same lock, before its promote run starts."""
    name = task.qualified_name(variant)
    client = mlflow.MlflowClient()
    with promotion_lock(name):
        version = _existing_version(client, name, candidate.run.info.run_id)
        champion = _current(client, name, CHAMPION)
        if evidence is None and champion is not None and str(champion.version) != version:
            evidence = weigh(task, candidate, champion, gate)
        if version is None:
            version = str(mlflow.register_model(f"models:/{candidate.model_id}", name).version)
        else:
            print(f"run {candidate.run.info.run_id} is already version {version} of {name}: not registered again")
        decision = _gate(task, candidate, version, champion, margin, gate, alpha, evidence)
        client.set_registered_model_alias(name, CHALLENGER, version)
        if decision.promoted:
            client.set_registered_model_alias(name, CHAMPION, version)
        if decision.promoted or decision.outcome == CHALLENGER:  # the champion promoted again keeps its own why
            tags = version_tags(candidate, decision)
            for key in DECISION_TAGS & client.get_model_version(name, version).tags.keys() - tags.keys():
                client.delete_model_version_tag(name, version, key)  # an earlier promotion's
            for key, value in tags.items():
                client.set_model_version_tag(name, version, key, value)
            client.update_model_version(name, version, description=describe_version(candidate, decision))
    return decision


# A version's tags that only some decisions have.
DECISION_TAGS = {schema.INTERVAL_TAG, schema.VERSION_COMPARED_WITH_TAG, schema.VERSION_P_VALUE_TAG}


def version_tags(candidate, decision):
    """A version's tags, few and short, for searches and scripts: its score, the decision and
    what it was weighed against, its code, and its sweep's trial. Its run is the version's
    own `run_id`; the full evidence stays on the promote run (`promotion.*`)."""
    tags, evidence = candidate.run.data.tags, decision.evidence
    found = {
        candidate.metric: f"{candidate.value:.6g}",
        schema.INTERVAL_TAG: tracking.interval_text(decision.interval),
        schema.VERSION_DECISION_TAG: decision.outcome,
        schema.VERSION_COMPARED_WITH_TAG: evidence.get(PROMOTION_TAG["champion_version"], ""),
        schema.VERSION_P_VALUE_TAG: evidence.get(PROMOTION_TAG["p_value"], ""),
        schema.VERSION_GIT_COMMIT_TAG: tags.get(schema.GIT_COMMIT_TAG, "unknown"),
    }
    if schema.study_of(tags):
        found |= {
            schema.VERSION_STUDY_TAG: schema.study_of(tags),
            schema.VERSION_TRIAL_TAG: tags.get(schema.TRIAL_NUMBER_TAG, ""),
        }
    return {key: value for key, value in found.items() if value}


def describe_version(candidate, decision):
    """The version's description (Markdown), read on its registry page: the decision, with the
    score and interval, what it was weighed against and the verdict, and its source run."""
    run = candidate.run
    source = tracking.run_link(run.info.experiment_id, run.info.run_id, run.info.run_name)
    if decision.promoted:
        outcome = f"**Promoted to {CHAMPION}**"
    else:
        outcome = f"**{CHALLENGER.capitalize()}**, the {CHAMPION} stayed version {decision.champion}"
    verdict = decision.reason.removeprefix("promoted: ").removeprefix("kept the champion: ")
    return f"{outcome}: {verdict}.\n\nTrained by run {source}."


def test_digest(run):
    """The digest of the test split the run was evaluated on (logged as a dataset input)."""
    for dataset_input in run.inputs.dataset_inputs:
        if schema.dataset_context(dataset_input) == "test":
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


@dataclass(frozen=True)
class Evidence:
    """The champion against the challenger on the challenger's test examples."""

    champion_value: float  # the champion's metric on the challenger's test split
    same_data: bool  # False: the champion was evaluated again on the challenger's split
    intervals: dict  # {"challenger" | "champion": (low, high)} of the metric, where known
    paired: significance.PairedTest | None = None  # gate=paired: the test on the same examples


def _gate(task, candidate, version, champion, margin, gate, alpha, evidence=None):
    metric, value = candidate.metric, candidate.value
    own_interval = schema.logged_interval(candidate.run.data.metrics, metric)
    score = f"{metric} {value:.4f}" + (f" (95% interval {_interval_text(own_interval)})" if own_interval else "")
    if champion is None:
        first = {PROMOTION_TAG["gate"]: gate}
        return Decision(version, version, True, f"no champion yet; {score}", first, own_interval)
    if str(champion.version) == version:
        reason = f"version {version} is already the champion; {score}"
        return Decision(version, version, False, reason, interval=own_interval)
    evidence = evidence or weigh(task, candidate, champion, gate)
    challenger_ci, champion_ci = (_interval_text(evidence.intervals.get(side)) for side in ("challenger", "champion"))
    verdict = (
        f"{metric} {value:.4f}{challenger_ci and f' (95% interval {challenger_ci})'} against champion version "
        f"{champion.version}'s {evidence.champion_value:.4f}{champion_ci and f' ({champion_ci})'} (margin {margin:g}"
    )
    verdict += f", alpha {alpha:g})" if gate == PAIRED else ")"
    if not evidence.same_data:
        verdict += "; the champion was evaluated again on this run's test data"
    tags = {PROMOTION_TAG["gate"]: gate, PROMOTION_TAG["champion_version"]: str(champion.version)}
    intervals = {PROMOTION_TAG["challenger_interval"]: challenger_ci, PROMOTION_TAG["champion_interval"]: champion_ci}
    tags |= {key: text for key, text in intervals.items() if text}
    wins = is_better(task, value, evidence.champion_value, margin)
    if gate == PAIRED:
        test = evidence.paired
        tags |= {PROMOTION_TAG["alpha"]: f"{alpha:g}", **paired_tags(test)}
        significant = test.significant(alpha)
        wins = wins and significant
        if test.gain <= 0:
            why = "not a win"
        elif not significant:
            why = f"a win inside the noise (p >= alpha {alpha:g})"
        elif not wins:
            why = f"significant, but not above the margin {margin:g}"
        else:
            why = f"a significant win (p < alpha {alpha:g})"
        verdict += f": {why}; {test.describe()}"
    interval = evidence.intervals.get("challenger")
    if wins:
        return Decision(version, version, True, f"promoted: {verdict}", tags, interval)
    return Decision(version, champion.version, False, f"kept the champion: {verdict}", tags, interval)


def paired_tags(test):
    """A paired test as a version's tags: which test, on how many examples, its counts and p-value."""
    tags = {
        PROMOTION_TAG["test"]: test.test,
        PROMOTION_TAG["test_examples"]: str(test.examples),
        PROMOTION_TAG["gain"]: f"{test.gain:.6g}",
        PROMOTION_TAG["p_value"]: f"{test.p_value:.6g}",
    }
    if test.test == "mcnemar":
        tags |= {
            PROMOTION_TAG["challenger_only_right"]: str(test.challenger_only),
            PROMOTION_TAG["champion_only_right"]: str(test.champion_only),
        }
    else:
        tags[PROMOTION_TAG["gain_interval"]] = _interval_text(test.gain_interval)
    return tags


def _interval_text(interval):
    return "" if interval is None else f"{interval[0]:.4f} to {interval[1]:.4f}"


def weigh(task, candidate, champion, gate):
    """The champion's metric (and interval) on the candidate's test data, and with gate=paired
    the paired test of the two on the same examples.

    Both runs' logged predictions are paired when they were tested on the same split (same
    test digest); otherwise the champion is evaluated again on the candidate's split, and
    refused (InputError) when it can't be: its data or model gone."""
    client = mlflow.MlflowClient()
    champion_run = client.get_run(champion.run_id)
    digest = test_digest(candidate.run)
    same_data = bool(digest) and test_digest(champion_run) == digest
    metric = candidate.metric
    intervals = {}
    if schema.logged_interval(candidate.run.data.metrics, metric):
        intervals["challenger"] = schema.logged_interval(candidate.run.data.metrics, metric)
    if gate != PAIRED and same_data and metric in champion_run.data.metrics:
        if schema.logged_interval(champion_run.data.metrics, metric):
            intervals["champion"] = schema.logged_interval(champion_run.data.metrics, metric)
        return Evidence(champion_run.data.metrics[metric], True, intervals)
    challenger = logged_predictions(candidate.run, digest) if gate == PAIRED else None
    if gate == PAIRED and challenger is None:  # a run from before predictions were logged
        challenger = _evaluate_again(task, candidate.run, f"models:/{candidate.model_id}", "this run")
    champion_predictions = logged_predictions(champion_run, digest) if same_data else None
    if champion_predictions is None:
        what = f"the champion, version {champion.version}"
        if not same_data:
            other = test_digest(champion_run) or "unknown"
            what += f", tested on other data (test digest {other}, this run's {digest})"
        champion_predictions = _evaluate_again(task, candidate.run, f"models:/{champion.name}/{champion.version}", what)
    truth, predicted = champion_predictions["truth"], champion_predictions["predicted"]
    champion_value = significance.metric_of(task.kind, truth, predicted)
    if same_data and metric in champion_run.data.metrics:
        champion_value = champion_run.data.metrics[metric]
    intervals["champion"] = significance.interval_of(task.kind, truth, predicted)
    paired = None
    if gate == PAIRED:
        if len(challenger["truth"]) != len(truth) or not np.array_equal(challenger["truth"], truth):
            raise InputError(
                f"run_id: run {candidate.run.info.run_id}'s logged test predictions are not of its test split as the "
                "champion was evaluated on it; cannot pair them"
            )
        if task.kind == "regression":
            paired = significance.paired_bootstrap(truth, challenger["predicted"], predicted)
        else:
            paired = significance.paired_classifiers(truth, challenger["predicted"], predicted)
        intervals.setdefault("challenger", significance.interval_of(task.kind, truth, challenger["predicted"]))
    return Evidence(champion_value, same_data, intervals, paired)


def logged_predictions(run, digest=None):
    """{truth, predicted, ...} the run logged on its test split (`schema.PREDICTIONS_ARTIFACT`),
    or None when it logged none (or, given `digest`, of another split)."""
    from pipelines import reporting  # matplotlib and scikit-learn: imported when a promotion pairs runs

    with tempfile.TemporaryDirectory(prefix="predictions-") as folder:
        try:
            path = mlflow.artifacts.download_artifacts(
                run_id=run.info.run_id, artifact_path=schema.PREDICTIONS_ARTIFACT, dst_path=folder
            )
            found = reporting.read_predictions(path)  # read whole: the file goes with the folder
        except (mlflow.MlflowException, OSError, KeyError, ValueError):
            return None
    return found if digest is None or found["test_digest"] == digest else None


def _evaluate_again(task, run, model_uri, what):
    """{truth, predicted} of `model_uri` on `run`'s test split; refused in one line when it can't be done."""
    try:
        return evaluate_predictions(task, run, model_uri)[1]
    except (InputError, OSError, mlflow.MlflowException) as error:
        raise InputError(
            f"run_id: cannot pair run {run.info.run_id} with {what}: evaluating it again on this run's test split "
            f"failed ({str(error).splitlines()[0] if str(error) else type(error).__name__})"
        ) from None


def evaluate_predictions(task, run, model_uri):
    """(test metrics, {truth, predicted}) of `model_uri` on the test split `run` was evaluated on."""
    from pipelines import reporting
    from pipelines.train import evaluate_model

    data = run.data.params.get("data") or None
    splits = task.load(Path(data) if data else None, split_seed_of(run))
    variant = run.data.tags[schema.VARIANT_TAG]
    metrics, _, outputs = evaluate_model(mlflow.keras.load_model(model_uri), task, variant, splits)
    truth, predicted = reporting.prediction_arrays(task.kind, splits.y_test, outputs)
    return metrics, {"truth": truth, "predicted": predicted}


def split_seed_of(run):
    """The seed of `run`'s test split: `split_seed`, or `seed` for a run from before test splits were fixed."""
    params = run.data.params
    return int(params.get("split_seed", params.get("seed", 0)))


def promotion_lock(name):
    """One promotion of `name` at a time on this machine: a file lock in the temporary
    directory, one per store and model (a SQLite store by its absolute path), so that none
    is left in the project folder, where the default store `mlflow.db` lives."""
    uri = mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///"):
        uri = "sqlite:///" + str(Path(uri.removeprefix("sqlite:///").split("?")[0]).resolve())
    digest = hashlib.sha256(uri.encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / f"mlflow-promote-{digest}-{name}.lock"
    return FileLock(path, is_singleton=True)  # one lock per file: re-entrant within a thread


# --- the promote command ----------------------------------------------------------------


def describe_promotion(name, candidate, decision):
    """The promote run's description (Markdown): the decision, its reason, links to the run and version."""
    run = candidate.run
    source = tracking.run_link(run.info.experiment_id, run.info.run_id, f"{run.info.run_name} ({run.info.run_id})")
    version = f"[{name} version {decision.version}](#/models/{name}/versions/{decision.version})"
    if decision.promoted:
        outcome = f"**{version} is now the {CHAMPION}**"
    else:
        outcome = f"**{version} is the {CHALLENGER}; the {CHAMPION} stays version {decision.champion}**"
    return f"Promoted run {source}: {outcome}. Why: {decision.reason}."


def serving_commands(model_uri):
    """What a promotion prints to serve the model, then to ask it with the input example it was logged with."""
    host, port = SERVING_ADDRESS.split(":")
    example = f"{model_uri}/{schema.SERVING_INPUT_EXAMPLE}"
    return [
        "serve it:",
        f"  TF_CPP_MIN_LOG_LEVEL=3 mlflow models serve -m {model_uri} --env-manager local --host {host} --port {port}",
        "then ask it, in another terminal, with the model's own input example:",
        f"  mlflow artifacts download -u {example} | xargs cat | "
        f"curl -s http://{SERVING_ADDRESS}/invocations -H 'Content-Type: application/json' -d @-",
    ]


def run_promotion(task, variant, run_id, study, margin, gate, alpha, experiment):
    """Pick, register and gate a run of `task` (a task or entry point name) inside a
    `promote-<model>` MLflow run; print the decision. A challenger that cannot be paired
    with the champion is refused before that run starts."""
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
    tracking.open_store()
    own_experiment = None if os.environ.get("MLFLOW_RUN_ID") else tracking.experiment_of_its_own(PROMOTE_EXPERIMENT)
    # No `entry_point` tag: a promote run must never be taken for a training run.
    tags = {
        schema.TASK_TAG: task.name,
        schema.VARIANT_TAG: variant,
        schema.MODEL_TAG: name,
        schema.STEP_TAG: schema.PROMOTE_STEP,
    }
    selection = f"run {run_id}" if run_id else f"best of sweep {study}" if study else "best run"
    settings = {"margin": margin, "gate": gate, "alpha": alpha}
    with promotion_lock(name):  # re-entrant: `promote` takes it again; the champion can't change in between
        evidence = None
        champion = _current(mlflow.MlflowClient(), name, CHAMPION)
        if champion is not None and champion.run_id != candidate.run.info.run_id:
            evidence = weigh(task, candidate, champion, gate)  # a refusal comes here, before any run
        promotion = f"promote-{name}"  # seconds of bookkeeping: no system metrics
        with tracking.mlflow_run(promotion, tags, system_metrics_interval=0, experiment_id=own_experiment) as run:
            source = {schema.SOURCE_RUN_PARAM: candidate.run.info.run_id, schema.SELECTION_PARAM: selection}
            mlflow.log_params({schema.MODEL_PARAM: name, **settings, **source})
            decision = promote(task, variant, candidate, **settings, evidence=evidence)
            mlflow.set_tags(
                {
                    schema.PROMOTED_VERSION_TAG: decision.version,
                    schema.CHAMPION_VERSION_TAG: decision.champion,
                    PROMOTION_TAG["decision"]: decision.outcome,
                    PROMOTION_TAG["reason"]: decision.reason,
                    **decision.evidence,
                    schema.DESCRIPTION_TAG: describe_promotion(name, candidate, decision),
                }
            )
    print(
        f"{name} version {decision.version} (run {candidate.run.info.run_id}, {candidate.metric} {candidate.value:.4f})"
    )
    print(f"{CHAMPION}: version {decision.champion}; {decision.reason}")
    for line in serving_commands(f"models:/{name}@{CHAMPION}"):
        print(line)
    tracking.print_links(
        {
            "the version": tracking.model_url(name, decision.version),
            "the promotion": tracking.run_url(run.info.experiment_id, run.info.run_id),
        }
    )
    return decision, run.info.run_id
