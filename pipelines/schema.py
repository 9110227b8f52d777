"""The run schema: every name the project writes to a store and reads back.

Tags, params, metric names and artifact paths of MLflow runs, the tags of registered model
versions, and the attributes of Optuna studies and trials. Each is written here once;
writers and readers import it, and the small readers below answer the questions other
modules ask of a run (is it a sweep's trial, which process runs it, which seed stands for
a repeats parent). Runs already in a store keep their meaning only while these names stay
as they are: rename one and the earlier runs stop matching.

Nothing here imports MLflow, so a command that only parses its settings stays fast.
tests/test_schema.py fails when one of these names is written as a literal elsewhere.
"""

from dataclasses import dataclass

# --- MLflow's own run tags (mlflow.utils.mlflow_tags), written by us where MLflow would -----
RUN_NAME_TAG = "mlflow.runName"
DESCRIPTION_TAG = "mlflow.note.content"  # the run's description in the UI, in Markdown
GIT_COMMIT_TAG = "mlflow.source.git.commit"
PARENT_RUN_TAG = "mlflow.parentRunId"
PROJECT_ENTRY_POINT_TAG = "mlflow.project.entryPoint"  # set by `mlflow run` on the run it makes
DATASET_CONTEXT_TAG = "mlflow.data.context"  # on a run's dataset input: train, validation or test
SHARED_VIEW_TAG_PREFIX = "mlflow.sharedViewState."  # an experiment tag per saved UI view

# --- what a run is -----------------------------------------------------------------------
TASK_TAG = "task"
VARIANT_TAG = "variant"
ENTRY_POINT_TAG = "entry_point"  # only training runs carry it: what promote, compare and resume look for
MODEL_TAG = "model"  # a bookkeeping run's registered model (repeats, promote, workflow)
STEP_TAG = "step"  # a bookkeeping run's kind: promote, compare or workflow
PROMOTE_STEP, COMPARE_STEP, WORKFLOW_STEP = "promote", "compare", "workflow"
DATASET_DIGEST_TAG = "dataset_digest"  # the training split's digest
NUM_PARAMS_PARAM = "num_params"  # the model's weights, counted
INTERVAL_TAG = "interval"  # the headline metric's 95% interval as short text (runs and versions)
DRY_RUN_TAG = "dry_run"
COMPARED_TAG, COMPARED_PARAM = "compared", "models"  # a compare run's model versions, as given
LAUNCH_TAG = "launch.run_id"  # on the run `mlflow run` made, when the work went on in another: that run

# --- how a run ended ---------------------------------------------------------------------
STOP_CAUSE_TAG = "stop.cause"  # why a run ended KILLED: a signal, or its launcher's exit
ERROR_KIND_TAG = "error.kind"  # why a run ended FAILED: BAD_INPUT_ERROR or FAILURE_ERROR
BAD_INPUT_ERROR, FAILURE_ERROR = "bad_input", "failed"
REAP_REASON_TAG, REAPED_AT_TAG = "reap.reason", "reap.time"

# --- the process that runs it (liveness) ---------------------------------------------------
HOST_TAG, PID_TAG, STARTED_TAG = "process.host", "process.pid", "process.started"
HEARTBEAT_TAG = "process.heartbeat"  # UTC, ISO 8601: readable in the UI, comparable in reap

# --- resumed runs --------------------------------------------------------------------------
RESUMED_FROM_EPOCH_TAG = "resume.from_epoch"  # the checkpoint's epoch this training went on from
RESUME_EPOCHS_TAG = "resume.epochs"  # the epochs last asked for: a resumed run keeps its first `epochs` param
RESUMED_FROM_RUN_TAG = "resume.run_id"  # a new run started from another run's checkpoint (a retried trial)
RESUME_CLAIM_PARAM_PREFIX = "resume.claim."  # + n: the n-th resume's process, "host pid start-time claimed-at-ms"

# --- sweeps ----------------------------------------------------------------------------------
SWEEP_ROLE_TAG = "sweep"  # STUDY_ROLE on the study's run, TRIAL_ROLE on each trial's
STUDY_ROLE, TRIAL_ROLE = "study", "trial"
STUDY_TAG = "optuna.study_name"
TRIAL_NUMBER_TAG = "optuna.trial_number"
TRIAL_STATE_TAG = "optuna.trial_state"
PRUNED_AT_EPOCH_TAG = "pruned_at_epoch"  # counted from 1, as best_epoch is
PREVIOUS_STUDY_RUN_TAG = "sweep.previous_run_id"  # the study's run of an earlier session
# The study's best trial so far, on its run.
BEST_TRIAL_TAGS = {name: f"best.{name}" for name in ("trial_number", "run_id", "model_id", "params")}
FIXED_PARAM_PREFIX = "fixed."  # the study run's params that every trial shares
OBJECTIVE_PARAM = "objective"  # "maximize val_accuracy"
STUDY_RUN_ATTR = "mlflow_run_id"  # Optuna study attribute: the study's MLflow run
STUDY_ENTRY_POINT_ATTR = "entry_point"
STUDY_SESSIONS_ATTR = "sessions"  # how many sweep commands have opened the study
TRIAL_RUN_ATTR = "mlflow_run_id"  # Optuna trial attributes: the trial's run, model and worker
TRIAL_MODEL_ATTR = "model_id"
TRIAL_WORKER_ATTR = "worker"  # "host:pid"

# --- seed repeats ----------------------------------------------------------------------------
REPEAT_COUNT_TAG = "repeat.count"  # on the parent: how many seeds
REPEAT_MEDIAN_RUN_TAG = "repeat.median_run_id"  # on the parent: the run that stands for the group
REPEAT_MEDIAN_SEED_TAG = "repeat.median_seed"
REPEAT_SEED_TAG = "repeat.seed"  # on each child
REPEAT_STATISTICS = ("mean", "std", "min", "max")  # the parent's metrics: test_accuracy_mean, ...

# --- promotions --------------------------------------------------------------------------------
# The promote run's decision and its evidence: the gate, its test, counts, p-value and intervals.
PROMOTION_TAGS = {
    name: f"promotion.{name}"
    for name in (
        "decision",
        "reason",
        "gate",
        "alpha",
        "champion_version",
        "challenger_interval",
        "champion_interval",
        "test",
        "test_examples",
        "gain",
        "gain_interval",
        "p_value",
        "challenger_only_right",
        "champion_only_right",
    )
}
PROMOTED_VERSION_TAG, CHAMPION_VERSION_TAG = "model_version", "champion_version"
# A promote run's model, the run it promoted, and how that run was chosen (a run id, a sweep's best).
MODEL_PARAM, SOURCE_RUN_PARAM, SELECTION_PARAM = "model", "source_run_id", "selection"
# A registered version's own tags: few and short, for searches and scripts.
VERSION_DECISION_TAG = "decision"
VERSION_COMPARED_WITH_TAG = "compared_with"
VERSION_P_VALUE_TAG = "p_value"
VERSION_GIT_COMMIT_TAG = "git_commit"
VERSION_STUDY_TAG, VERSION_TRIAL_TAG = "study", "trial"

# --- metrics -------------------------------------------------------------------------------------
TRAIN_TIME_METRIC = "train_time_s"
EPOCH_TIME_METRIC = "epoch_time_s"  # each epoch's wall time, logged beside Keras' metrics
BEST_EPOCH_METRIC, STOPPED_EPOCH_METRIC = "best_epoch", "stopped_epoch"  # early stopping's, from 1
TEST_METRIC_PREFIX = "test_"
CLASS_RECALL_PREFIX = "test_recall_"  # + a class's name: a multiclass run's recall of each class
INTERVAL_SUFFIXES = ("_ci_low", "_ci_high")  # test_accuracy_ci_low: a headline metric's 95% interval
SYSTEM_METRIC_PREFIX = "system/"  # MLflow's system metrics
BEST_VALUE_METRIC = "best_value"  # the study run's best objective, and best_trial_<metric>
BEST_TRIAL_METRIC_PREFIX = "best_trial_"
TRIAL_COUNT_METRIC_PREFIX = "trials_"  # + complete, pruned, failed

# --- artifacts -------------------------------------------------------------------------------------
FIGURES_FOLDER = "figures"
LEARNING_CURVES_ARTIFACT = f"{FIGURES_FOLDER}/learning_curves.png"
CONFUSION_FIGURE_ARTIFACT = f"{FIGURES_FOLDER}/confusion_matrix.png"
CONFUSION_MATRIX_ARTIFACT = "evaluation/confusion_matrix.json"
PREDICTIONS_ARTIFACT = "evaluation/test_predictions.npz"  # what promote and compare pair runs by
OPTIMIZER_CONFIG_ARTIFACT = "optimizer_config.json"
MODEL_SUMMARY_ARTIFACT = "model_summary.txt"
CHECKPOINTS_FOLDER = "checkpoints"  # one folder per epoch: checkpoints/epoch-0003
SWEEP_FOLDER = "sweep"  # the study run's search space, trials table and Optuna's plots
SEARCH_SPACE_ARTIFACT = f"{SWEEP_FOLDER}/search_space.json"
TRIALS_TABLE_ARTIFACT = f"{SWEEP_FOLDER}/trials.csv"
COMPARISON_FOLDER = "comparison"  # a compare run's report.html, table.csv, pairwise_tests.csv and figures
COMPARISON_REPORT_ARTIFACT = f"{COMPARISON_FOLDER}/report.html"
SERVING_INPUT_EXAMPLE = "serving_input_example.json"  # MLflow writes it beside a model logged with an input example


# --- readers -----------------------------------------------------------------------------------------


def interval_metric_names(metric):
    """The names of `metric`'s 95% interval ends: (low, high)."""
    return tuple(metric + suffix for suffix in INTERVAL_SUFFIXES)


def logged_interval(metrics, metric):
    """(low, high) of `metric`'s 95% interval among a run's `metrics`, or None."""
    low, high = (metrics.get(name) for name in interval_metric_names(metric))
    return None if low is None or high is None else (low, high)


def workflow_step_tag(step):
    """On a workflow's run, step `step`'s run; on each step's run, the step's before it."""
    return f"workflow.{step}_run_id"


def repeat_metric_name(metric, statistic):
    """A seed-repeats parent's `statistic` (one of REPEAT_STATISTICS) of its children's `metric`."""
    return f"{metric}_{statistic}"


def study_of(tags):
    """The Optuna study of a sweep's run (its study run or a trial), or None."""
    return tags.get(STUDY_TAG)


def is_trial(tags):
    return tags.get(SWEEP_ROLE_TAG) == TRIAL_ROLE


def trial_number(tags):
    return int(tags[TRIAL_NUMBER_TAG])


def trial_tags(study, number):
    """The tags that make a training run trial `number` of `study`."""
    return {STUDY_TAG: study, TRIAL_NUMBER_TAG: str(number), SWEEP_ROLE_TAG: TRIAL_ROLE}


def trials_filter(study, number=None):
    """A search filter for the runs of `study`'s trials (of trial `number` alone, if given)."""
    if number is None:
        return f"tags.`{STUDY_TAG}` = '{study}' AND tags.{SWEEP_ROLE_TAG} = '{TRIAL_ROLE}'"
    return f"tags.`{STUDY_TAG}` = '{study}' AND tags.`{TRIAL_NUMBER_TAG}` = '{number}'"


def trainings_filter(entry_point):
    """A search filter for the finished training runs of `entry_point`."""
    return f"tags.{ENTRY_POINT_TAG} = '{entry_point}' AND attributes.status = 'FINISHED'"


def trained_entry_point(tags):
    """The entry point a training run trained, or None for any other run."""
    return tags.get(ENTRY_POINT_TAG)


def repeats_median_run(tags):
    """The run that stands for a seed-repeats parent (its median seed's), or None for any other run."""
    return tags.get(REPEAT_MEDIAN_RUN_TAG)


def dataset_context(dataset_input):
    """train, validation or test: which split a run's dataset input is."""
    return {tag.key: tag.value for tag in dataset_input.tags}.get(DATASET_CONTEXT_TAG)


@dataclass(frozen=True)
class RunProcess:
    """The process a run's tags say runs it."""

    host: str
    pid: str
    started: str  # the process's start time, seconds since the epoch: tells a reused pid apart
    heartbeat: str  # its last heartbeat, UTC, ISO 8601


def process_of(tags):
    """The process that runs a run of this project, or None for a run with no heartbeat."""
    if HEARTBEAT_TAG not in tags:
        return None
    return RunProcess(tags.get(HOST_TAG, ""), tags.get(PID_TAG, ""), tags.get(STARTED_TAG, ""), tags[HEARTBEAT_TAG])


def process_tags(process):
    """A RunProcess as tags."""
    return {
        HOST_TAG: process.host,
        PID_TAG: process.pid,
        STARTED_TAG: process.started,
        HEARTBEAT_TAG: process.heartbeat,
    }
