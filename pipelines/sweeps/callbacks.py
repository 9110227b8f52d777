"""A trial's callbacks: Keras pruning after each epoch, and retrying the trials of dead workers."""

import math
import warnings

import mlflow
import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.trial import TrialState
from optuna_integration import KerasPruningCallback

from pipelines.sweeps import study_run

MAX_RETRIES = 2  # a trial whose worker died is run again at most this often


class TrialPruning(KerasPruningCallback):
    """optuna-integration's callback: reports the metric after each epoch, and prunes.

    A non-finite loss is not reported, so the trial fails on TerminateOnNaN instead of
    being pruned for it (Optuna's median pruner prunes NaN values). After the last epoch
    there is nothing left to save: the trial completes instead of being pruned. A retried
    trial that starts from its failed predecessor's checkpoint reports that one's values
    (`earlier`, by epoch) for the epochs before it.
    """

    def __init__(self, trial, monitor, earlier=None):
        super().__init__(trial, monitor)
        self._earlier = dict(earlier or {})

    def on_epoch_begin(self, epoch, logs=None):
        for step in sorted(step for step in self._earlier if step < epoch):
            self._trial.report(self._earlier[step], step=step)
        self._earlier = {}

    def on_epoch_end(self, epoch, logs=None):
        if not math.isfinite((logs or {}).get("loss", math.nan)):
            return
        if epoch + 1 >= self.params["epochs"] and self._monitor in logs:
            self._trial.report(float(logs[self._monitor]), step=epoch)
            return
        super().on_epoch_end(epoch, logs)


class FailStaleTrial:
    """A dead worker's trial: end its MLflow run FAILED, then queue the trial to run again."""

    def __init__(self, experiment_id, study_name):
        self.experiment_id = experiment_id
        self.study_name = study_name
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            self.retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)

    def __call__(self, study, trial):
        client = mlflow.MlflowClient()
        for run in study_run.trial_runs(self.experiment_id, self.study_name, trial.number, status="RUNNING"):
            client.set_tag(run.info.run_id, "optuna.trial_state", TrialState.FAIL.name)
            client.set_terminated(run.info.run_id, "FAILED")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            self.retry(study, trial)
