"""A trial's Keras callback: optuna-integration's pruning after each epoch."""

import math

from optuna_integration import KerasPruningCallback


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
