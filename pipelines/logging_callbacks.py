"""Keras callbacks that log a training to its run, in place of autolog's (`train` turns it off).

- `ModelSummary` logs, as training begins, the model's summary and the optimizer's
  configuration: an artifact rather than two dozen `optimizer_*` params beside ours,
  since what a run varies of it is one of our params (`optimizer`, `learning_rate`,
  `lr_schedule`).
- `EpochMetrics` keeps each epoch's metrics and logs them once the checkpoint holding the
  epoch is complete. Autolog's, logged at every epoch's end, would be lost to a kill, or
  logged twice by the resumed training that recomputes the epochs after the checkpoint.

What else autolog would log comes from `train`: our params (not `fit`'s arguments, which a
resumed run given more epochs could not log again), the datasets with their real source
and all three splits, and the model with its signature and input example. Autolog's
`validation_*` copies of each evaluation are left out: the `val_*` metrics hold the same numbers.
"""

import time

import keras
import mlflow
from mlflow.entities import Metric

from pipelines import schema

MAX_METRICS_PER_BATCH = 1000  # MLflow's limit for one log_batch


class ModelSummary(keras.callbacks.Callback):
    """Logs the model's summary and the optimizer's configuration when `fit` has built both."""

    def on_train_begin(self, logs=None):
        mlflow.log_dict(self.model.optimizer.get_config(), schema.OPTIMIZER_CONFIG_ARTIFACT)
        lines = []
        self.model.summary(print_fn=lambda line, *args, **kwargs: lines.append(line))
        mlflow.log_text("\n".join(lines), schema.MODEL_SUMMARY_ARTIFACT)


class EpochMetrics(keras.callbacks.Callback):
    """Every epoch's logs and duration (`history`, `epoch_seconds`), those of a `restored`
    checkpoint included, logged to run `run_id` with the epoch as step (from 0).

    The checkpoint saves `history` and `epoch_seconds` and then calls `checkpointed`: an
    epoch is logged only once a checkpoint holds it. A training killed after its last
    checkpoint resumes from it and recomputes and logs the epochs after it, so no step is
    missing from the run or logged twice. A kill between a checkpoint and its metrics
    leaves steps the resumed training logs at its start, from the checkpoint's history.
    Place it before the checkpoint among `fit`'s callbacks: the checkpoint saves what this
    has recorded of the epoch.
    """

    def __init__(self, run_id, restored=None):
        super().__init__()
        state = restored.state if restored else {}
        self.run_id = run_id
        self.history = {name: list(values) for name, values in state.get("history", {}).items()}
        self.epoch_seconds = list(state.get("epoch_seconds", []))
        self._restored_epochs = restored.epoch if restored else 0
        self._logged_epochs = self._restored_epochs  # epochs whose metrics are in the run

    def on_train_begin(self, logs=None):
        if not self._restored_epochs:
            return
        # All of the checkpoint's epochs in a new run started from another run's checkpoint;
        # those a kill cut off in the same run.
        history = mlflow.MlflowClient().get_metric_history(self.run_id, schema.EPOCH_TIME_METRIC)
        logged = {metric.step for metric in history}
        self._log([step for step in range(self._restored_epochs) if step not in logged])

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_seconds.append(time.perf_counter() - self._epoch_start)
        for name, value in (logs or {}).items():
            self.history.setdefault(name, []).append(float(value))

    def checkpointed(self, epochs):
        """The checkpoint of the first `epochs` epochs is complete: log those not logged yet."""
        self._log(range(self._logged_epochs, epochs))
        self._logged_epochs = max(self._logged_epochs, epochs)

    def log_pending(self):
        """Log every epoch recorded, checkpointed or not: for a training that will never resume."""
        self.checkpointed(len(self.epoch_seconds))

    def _log(self, steps):
        now = int(time.time() * 1000)
        series = {**self.history, schema.EPOCH_TIME_METRIC: self.epoch_seconds}
        metrics = [Metric(name, values[step], now, step) for name, values in series.items() for step in steps]
        for start in range(0, len(metrics), MAX_METRICS_PER_BATCH):
            mlflow.MlflowClient().log_batch(self.run_id, metrics=metrics[start : start + MAX_METRICS_PER_BATCH])
