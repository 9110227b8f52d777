"""Per-epoch checkpoints of a training, kept with its run in MLflow's artifact store.

A checkpoint is Keras' `BackupAndRestore` backup (the weights with the optimizer's state,
and the epochs done) plus what that backup leaves out and a resumed training needs to
continue exactly: the random generators' states of the model's dropout and augmentation
layers, early stopping's state, and the history so far. Under the run's artifacts:

    checkpoints/epoch-0003/latest.weights.h5         Keras: weights and optimizer state
    checkpoints/epoch-0003/training_metadata.json    Keras: the epochs done
    checkpoints/epoch-0003/state.json                ours, uploaded last

`state.json` completes a checkpoint and holds the weights' digest: a write cut short (a
kill, a lost connection) leaves a folder without a readable one, which readers skip,
and the previous checkpoint is deleted only once the new one is complete. The latest
checkpoint is kept, and the best epoch's when early stopping is on; a resumed training
deletes whatever older ones a kill left behind. Checkpoints are ordered by the epoch
number in their folder's name, and `state.json` may point only at another checkpoint
folder of the same run. Through a tracking server the artifacts live on the server, so
any machine can resume.

Each complete checkpoint tells the run's `logging_callbacks.EpochMetrics`, which logs an
epoch's metrics only once a checkpoint holds it.
"""

import hashlib
import json
import re
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import keras
import mlflow
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

from pipelines import schema

STATE_FILE = "state.json"
WEIGHTS_FILE = "latest.weights.h5"  # BackupAndRestore's names
METADATA_FILE = "training_metadata.json"
BEST_WEIGHTS_FILE = "best.weights.h5"  # the best epoch's weights, restored beside the latest
FOLDER_PATTERN = re.compile(rf"{schema.CHECKPOINTS_FOLDER}/epoch-(\d+)")
# Epochs of milliseconds (xor, churn) would spend more time checkpointing than training:
# a checkpoint is written at most this often, and always after the last epoch. A kill then
# loses at most this much training besides the epoch under way.
MIN_SECONDS_BETWEEN = 1.0
SEED_STATE = "seed_generator_state"  # Keras' name for a random generator's state variable


def folder(epoch):
    """The artifact folder of the checkpoint taken after `epoch` epochs."""
    return f"{schema.CHECKPOINTS_FOLDER}/epoch-{epoch:04d}"


def epoch_of(path):
    """The epoch a checkpoint folder's name holds (`checkpoints/epoch-0012` -> 12); None for
    any other path. Names are compared by this number: past epoch 9999 text order is wrong."""
    match = FOLDER_PATTERN.fullmatch(path)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class Checkpoint:
    """A complete checkpoint of a run, read into memory: nothing of it stays on disk."""

    run_id: str
    path: str  # artifact folder: checkpoints/epoch-0003
    files: dict  # {WEIGHTS_FILE: bytes, METADATA_FILE: bytes}: what BackupAndRestore loads
    state: dict  # epoch, history, epoch_seconds, train_seconds, seed_states, early_stopping, weights_sha256
    best_weights: bytes | None = None  # the best epoch's weights, when early stopping kept another checkpoint

    @property
    def epoch(self):
        """Epochs done when it was taken."""
        return self.state["epoch"]


def _sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class RunCheckpoint(keras.callbacks.BackupAndRestore):
    """BackupAndRestore whose backups go to the run's artifacts as complete checkpoints.

    Given a `restored` checkpoint, training continues from it: Keras loads the weights,
    optimizer state and epoch at `on_train_begin`, and this adds the generators' states
    and early stopping's. `epoch_metrics` (`logging_callbacks.EpochMetrics`, placed before
    this among `fit`'s callbacks) holds every epoch's logs and duration, which each
    checkpoint saves; it is told each time a checkpoint is complete. `seconds_before` is
    the training time up to the restored checkpoint. `kept` are the checkpoint folders the
    run holds already.
    """

    def __init__(self, run_id, workdir, epoch_metrics, early_stopping=None, restored=None, kept=()):
        super().__init__(backup_dir=str(workdir), delete_checkpoint=False)
        self.run_id = run_id
        self.workdir = Path(workdir)
        self.epoch_metrics = epoch_metrics
        self.early_stopping = early_stopping
        self.restored = restored
        state = restored.state if restored else {}
        self.seconds_before = state.get("train_seconds", 0.0)
        self.best_path = None
        # This run's checkpoint folders: those a resumed run holds already (older ones a kill left
        # behind included), then each it writes. All but the latest and the best are deleted.
        self.kept = list(kept)
        if restored and restored.run_id == run_id:  # not a new run started from another's checkpoint
            self.best_path = (state.get("early_stopping") or {}).get("path")
        self._written_epoch = restored.epoch if restored else 0
        self._last_write = float("-inf")
        self._latest = None  # the folder of the checkpoint written (or restored) last
        self._warned = False
        if restored:  # BackupAndRestore loads what it finds in its backup_dir
            self.workdir.mkdir(parents=True, exist_ok=True)
            for name, content in restored.files.items():
                (self.workdir / name).write_bytes(content)

    # --- restoring ------------------------------------------------------------------

    def _load_model(self):
        if self.restored and self.early_stopping is not None:
            self._restore_best_weights()  # before the latest: loading them replaces the model's state
        super()._load_model()
        if not self.restored:
            return
        # By position: the variables' names depend on what else this process has built.
        states = self.restored.state.get("seed_states", [])
        for variable, value in zip(_seed_states(self.model), states, strict=False):
            variable.assign(value)

    def _restore_best_weights(self):
        saved = self.restored.state.get("early_stopping")
        if not saved:
            return
        self._best_weights = None  # the latest is the best: taken once it is loaded
        if self.restored.best_weights is not None:
            best = self.workdir / BEST_WEIGHTS_FILE
            best.write_bytes(self.restored.best_weights)
            if not self.model.optimizer.built:  # the file holds its state too: else Keras warns and skips it
                self.model.optimizer.build(self.model.trainable_variables)
            self.model.load_weights(best)
            self._best_weights = self.model.get_weights()
        self._saved_early_stopping = saved

    def on_train_begin(self, logs=None):
        self._fit_start = time.perf_counter()
        super().on_train_begin(logs)
        if self.restored and self.restored.run_id == self.run_id:
            # What a kill left beside the checkpoint goes now: no epoch may be left to train.
            self._forget_superseded(self.restored.path)
        saved = getattr(self, "_saved_early_stopping", None)
        if self.early_stopping is None or saved is None:
            return
        # EarlyStopping.on_train_begin (run before this) reset its state: restore it.
        self.early_stopping.wait = saved["wait"]
        self.early_stopping.best = saved["best"]
        self.early_stopping.best_epoch = saved["best_epoch"]
        self.early_stopping.best_weights = self._best_weights or self.model.get_weights()

    # --- writing --------------------------------------------------------------------

    def on_epoch_end(self, epoch, logs=None):
        self._current_epoch = epoch + 1
        last = self._current_epoch >= self.params["epochs"]
        best = self.early_stopping is not None and self.early_stopping.best_epoch == epoch  # kept on disk
        if last or best or time.monotonic() - self._last_write >= MIN_SECONDS_BETWEEN:
            self._save_model()

    def on_train_end(self, logs=None):
        if self._written_epoch < self._current_epoch:  # stopped early after a skipped write
            self._save_model()
        elif set(self.kept) - {self._latest, self.best_path}:  # a deletion failed: once more
            self._forget_superseded(self._latest)

    def _save_model(self):
        """Keras' backup into the work folder, then the checkpoint into the run's artifacts."""
        super()._save_model()
        epoch = self._current_epoch
        path = folder(epoch)
        state = {
            "epoch": epoch,
            "history": self.epoch_metrics.history,
            "epoch_seconds": self.epoch_metrics.epoch_seconds,
            "train_seconds": self.seconds_before + time.perf_counter() - self._fit_start,
            "seed_states": [v.numpy().tolist() for v in _seed_states(self.model)],
            "early_stopping": self._early_stopping_state(path),
            "weights_sha256": _sha256(self.workdir / WEIGHTS_FILE),
        }
        (self.workdir / STATE_FILE).write_text(json.dumps(state))
        client = mlflow.MlflowClient()
        for name in (WEIGHTS_FILE, METADATA_FILE, STATE_FILE):  # the state last: it completes the checkpoint
            client.log_artifact(self.run_id, str(self.workdir / name), path)
        self._written_epoch, self._last_write = epoch, time.monotonic()
        self._forget_superseded(path)
        self.epoch_metrics.checkpointed(epoch)

    def _early_stopping_state(self, path):
        stopping = self.early_stopping
        if stopping is None or stopping.best is None:
            return None
        if stopping.best_epoch + 1 == self._current_epoch:
            self.best_path = path
        return {
            "wait": stopping.wait,
            "best": float(stopping.best),
            "best_epoch": stopping.best_epoch,
            "path": self.best_path,
        }

    def _forget_superseded(self, latest):
        """Delete the run's older checkpoints but the best one."""
        self._latest = latest
        if latest not in self.kept:
            self.kept.append(latest)
        repository = get_artifact_repository(mlflow.MlflowClient().get_run(self.run_id).info.artifact_uri)
        for path in [p for p in self.kept if p not in (latest, self.best_path)]:
            try:
                repository.delete_artifacts(path)
            except (MlflowException, NotImplementedError, OSError) as error:
                if not self._warned:
                    self._warned = True
                    print(f"warning: older checkpoints are kept: cannot delete {path} ({error})", file=sys.stderr)
                continue
            self.kept.remove(path)


def _seed_states(model):
    return [variable for variable in model.variables if variable.path.endswith(SEED_STATE)]


# --- reading ------------------------------------------------------------------------


def run_folders(run_id):
    """The run's checkpoint folders, complete or not, by epoch; () if it has none or they can't be listed."""
    try:
        items = mlflow.MlflowClient().list_artifacts(run_id, schema.CHECKPOINTS_FOLDER)
    except (MlflowException, OSError):
        return ()
    return tuple(sorted((item.path for item in items if item.is_dir and epoch_of(item.path) is not None), key=epoch_of))


def latest(run_id):
    """The run's latest complete checkpoint, with the best epoch's weights when early
    stopping kept another checkpoint; None if the run has none. Files are downloaded into
    a temporary folder, read, and the folder removed."""
    client = mlflow.MlflowClient()
    with tempfile.TemporaryDirectory(prefix="checkpoint-") as download:
        for path in reversed(run_folders(run_id)):
            checkpoint = _download(client, run_id, path, Path(download))
            if checkpoint is None or checkpoint.epoch != epoch_of(path):
                continue
            best_path = (checkpoint.state.get("early_stopping") or {}).get("path")
            if not best_path or best_path == path:
                return checkpoint
            if epoch_of(best_path) is None:
                print(f"warning: {path} of run {run_id} names no checkpoint as its best: skipped", file=sys.stderr)
                continue
            best = _download(client, run_id, best_path, Path(download))
            if best is None:
                continue  # the best one is gone: early stopping could not go on exactly
            return replace(checkpoint, best_weights=best.files[WEIGHTS_FILE])
    return None


def _download(client, run_id, path, into):
    """The checkpoint in artifact folder `path` if it is complete, else None. Each folder is
    downloaded into its own place under `into`: two checkpoints share their files' names."""
    try:
        local = into / path.rpartition("/")[2]
        local.mkdir(parents=True, exist_ok=True)
        state = json.loads(Path(client.download_artifacts(run_id, f"{path}/{STATE_FILE}", str(local))).read_text())
        files = {
            name: Path(client.download_artifacts(run_id, f"{path}/{name}", str(local))).read_bytes()
            for name in (WEIGHTS_FILE, METADATA_FILE)
        }
        if hashlib.sha256(files[WEIGHTS_FILE]).hexdigest() != state["weights_sha256"]:
            return None
        json.loads(files[METADATA_FILE])
    except (MlflowException, OSError, ValueError, KeyError, TypeError):
        return None  # cut short while it was written
    return Checkpoint(run_id, path, files, state)
