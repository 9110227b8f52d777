"""Per-epoch checkpoints in the run's artifacts, resume, and early stopping."""

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml

from experiments import resolve
from pipelines import checkpoints, liveness, resume, schema, tracking
from pipelines.cli import main
from pipelines.data import prepare_data
from pipelines.logging_callbacks import EpochMetrics
from pipelines.params import declared_params, parse_params
from pipelines.train import train
from tests.conftest import _class_images
from tests.helpers import options, runs, start

# Epochs of a few seconds, longer than checkpoints.MIN_SECONDS_BETWEEN: each is
# checkpointed, and the test has time to kill the training in its third.
KILL_IMAGES = 8000
KILL_RECIPE = {"epochs": 4, "batch_size": 16, "filters": 8, "units": 16}


def checkpoint_folders(client, run_id):
    return sorted(item.path for item in client.list_artifacts(run_id, schema.CHECKPOINTS_FOLDER))


def steps(client, run_id, metric):
    return [m.step for m in client.get_metric_history(run_id, metric)]


@pytest.fixture
def slow_mnist(tmp_path):
    """An MNIST-layout file big enough for epochs of about a second with KILL_RECIPE."""
    rng = np.random.default_rng(0)
    y_train, y_test = np.arange(KILL_IMAGES) % 10, np.arange(200) % 10
    path = tmp_path / "mnist-8000.npz"
    np.savez(
        path,
        x_train=_class_images(y_train, 28, rng),
        y_train=y_train.astype("uint8"),
        x_test=_class_images(y_test, 28, rng),
        y_test=y_test.astype("uint8"),
    )
    return path


def test_epoch_metrics_are_logged_once_a_checkpoint_holds_them_and_never_twice(store):
    client = mlflow.MlflowClient()
    with mlflow.start_run() as run:
        run_id = run.info.run_id
        epoch_metrics = EpochMetrics(run_id)
        for epoch, loss in enumerate([0.9, 0.5, 0.4]):
            epoch_metrics.on_epoch_begin(epoch)
            epoch_metrics.on_epoch_end(epoch, {"loss": loss})
            if epoch == 0:
                assert steps(client, run_id, "loss") == []  # no checkpoint holds it yet
        epoch_metrics.checkpointed(2)
        epoch_metrics.checkpointed(2)
        assert sorted(steps(client, run_id, "loss")) == [0, 1]
        assert sorted(steps(client, run_id, schema.EPOCH_TIME_METRIC)) == [0, 1]
        # Resumed from that checkpoint after a kill that cut its metrics off: the missing step is logged.
        state = {"epoch": 3, "history": epoch_metrics.history, "epoch_seconds": epoch_metrics.epoch_seconds}
        EpochMetrics(run_id, checkpoints.Checkpoint(run_id, checkpoints.folder(3), {}, state)).on_train_begin()
        history = sorted(client.get_metric_history(run_id, "loss"), key=lambda metric: metric.step)
        assert [(m.step, m.value) for m in history] == [(0, 0.9), (1, 0.5), (2, 0.4)]


@pytest.mark.slow
def test_a_training_killed_between_checkpoints_resumes_to_the_uninterrupted_result(store, slow_mnist):
    recipe = {**KILL_RECIPE, "data": slow_mnist}
    epochs = recipe["epochs"]
    argv = ["--task", "mnist_cnn", *options(**recipe)]
    assert main(["train", *argv]) == 0
    (uninterrupted,) = runs(store)

    process = start(
        [sys.executable, "-m", "pipelines", "train", *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        run_id, checkpointed = _run_once_it_has_a_checkpoint(store, uninterrupted.info.run_id, before=epochs)
        os.kill(process.pid, signal.SIGKILL)  # mid-training: nothing runs in the process after this
    finally:
        process.kill()
        process.wait()
    assert store.get_run(run_id).info.status == "RUNNING"
    assert checkpoints.folder(epochs) not in checkpoint_folders(store, run_id)

    assert main(["train", *argv, "--resume", run_id]) == 0
    resumed = store.get_run(run_id)
    assert resumed.info.status == "FINISHED"
    # The kill may land after a later checkpoint than the one seen.
    assert checkpointed <= int(resumed.data.tags["resume.from_epoch"]) < epochs
    for metric in ("loss", "val_loss", "val_accuracy", "epoch_time_s"):
        assert steps(store, run_id, metric) == list(range(epochs)), metric  # none missing, none repeated
    # Op determinism, the data order drawn from (seed, epoch), the optimizer's and the random
    # generators' states restored: the same numbers as the training that was never stopped.
    for metric in ("test_accuracy", "test_loss", "val_loss"):
        assert resumed.data.metrics[metric] == uninterrupted.data.metrics[metric], metric
    assert checkpoint_folders(store, run_id) == [checkpoints.folder(epochs)]  # only the latest is kept


def _run_once_it_has_a_checkpoint(store, other_run_id, before, timeout=180):
    """(run id, epoch) of the training run (not `other_run_id`) once it holds a complete
    checkpoint of an epoch before `before`. Which epochs get one depends on how fast they run
    (checkpoints.MIN_SECONDS_BETWEEN), and only the latest is kept: any of them will do."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for run in runs(store):
            if run.info.run_id == other_run_id:
                continue
            for folder in checkpoint_folders(store, run.info.run_id):
                epoch = int(folder.rpartition("-")[2])
                files = {item.path for item in store.list_artifacts(run.info.run_id, folder)}
                if epoch < before and f"{folder}/{checkpoints.STATE_FILE}" in files:
                    return run.info.run_id, epoch
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint of an epoch before {before} within {timeout} s")


def test_a_checkpoint_cut_short_is_skipped_and_the_one_before_loads(store, tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoints, "MIN_SECONDS_BETWEEN", 0)  # a checkpoint after every epoch
    task, variant, params = tiny.params("churn", epochs=2)
    run_id = train(task, variant, params).run_id
    assert checkpoint_folders(store, run_id) == [checkpoints.folder(2)]  # epoch 1's was deleted
    # What a kill while epoch 3's checkpoint was written leaves: its weights cut short, and
    # its state file missing, or there but for other weights.
    whole = store.download_artifacts(run_id, f"{checkpoints.folder(2)}/{checkpoints.WEIGHTS_FILE}", str(tmp_path))
    cut = tmp_path / "cut" / checkpoints.WEIGHTS_FILE
    cut.parent.mkdir()
    cut.write_bytes(open(whole, "rb").read()[:1000])
    store.log_artifact(run_id, str(cut), checkpoints.folder(3))
    assert checkpoints.latest(run_id).path == checkpoints.folder(2)
    state = store.download_artifacts(run_id, f"{checkpoints.folder(2)}/{checkpoints.STATE_FILE}", str(tmp_path))
    store.log_artifact(run_id, state, checkpoints.folder(3))  # the state of a whole checkpoint, cut weights
    assert checkpoints.latest(run_id).path == checkpoints.folder(2)

    assert main(["train", *tiny.argv("churn", epochs=3), "--resume", run_id]) == 0
    assert steps(store, run_id, "loss") == [0, 1, 2]
    assert store.get_run(run_id).info.status == "FINISHED"


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("unknown", "error: resume: no run 0123456789abcdef0123456789abcdef in the tracking store"),
        ("finished", "error: epochs: run {run} FINISHED its 2 epochs; give more epochs to train it further"),
        ("other_parameter", "error: units: run {run} was trained with units=6, not 7; a resumed run keeps"),
        ("other_entry_point", "error: resume: run {run} trained churn, not xor"),
        ("fewer_epochs", "error: epochs: run {run} has trained 2 epochs already; give at least that many"),
        ("other_data", "error: data: the "),
        ("alive", "error: resume: run {run} is RUNNING, its process"),
        ("trial", "error: resume: run {run} is a trial of sweep s; run the sweep again"),
    ],
)
def test_resume_refuses_in_one_line_and_leaves_the_run_as_it_was(case, message, store, tiny, capsys):
    argv = tiny.argv("churn", epochs=3)
    run_id = train(*tiny.params("churn", epochs=2)).run_id
    if case == "unknown":
        run_id = "0123456789abcdef0123456789abcdef"
    elif case == "finished":
        argv = tiny.argv("churn", epochs=2)
    elif case == "other_parameter":
        argv = tiny.argv("churn", epochs=3, units=7)
    elif case == "other_entry_point":
        argv = tiny.argv("xor", epochs=3)
    elif case == "fewer_epochs":
        store.set_terminated(run_id, "KILLED")
        argv = tiny.argv("churn", epochs=1)
    elif case == "other_data":
        csv = tiny.data_files["churn"]
        csv.write_text(csv.read_text().replace(",France,", ",Spain,", 1))
    else:
        tags = {"entry_point": "churn", "task": "churn", "variant": "mlp"}
        if case == "alive":
            tags |= liveness.process_tags()  # this very process: alive
        if case == "trial":
            tags |= {"sweep": "trial", "optuna.study_name": "s"}
        run_id = store.create_run(os.environ["MLFLOW_EXPERIMENT_ID"], tags=tags).info.run_id
    before = None if case == "unknown" else store.get_run(run_id).info
    capsys.readouterr()

    assert main(["train", *argv, "--resume", run_id]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message.format(run=run_id)), err
    if case == "other_data":
        assert f"split differs from the one run {run_id} was trained on" in err[0]
    if before is not None:
        after = store.get_run(run_id).info
        assert (after.status, after.end_time) == (before.status, before.end_time)


def test_early_stopping_keeps_the_best_epoch_and_logs_its_model(store, tiny):
    patience, epochs = 1, 40
    task, variant, params = tiny.params("churn", epochs=epochs, patience=patience)
    result = train(task, variant, params)
    run = store.get_run(result.run_id)
    accuracy = [m.value for m in store.get_metric_history(result.run_id, "val_accuracy")]
    best, stopped = int(run.data.metrics["best_epoch"]), int(run.data.metrics["stopped_epoch"])
    assert stopped == len(accuracy) < epochs  # it stopped early...
    assert best == int(np.argmax(accuracy)) + 1 and stopped == best + patience  # ...once patience ran out
    # The logged model is the best epoch's: it scores that epoch's validation loss, not the last one's.
    splits = prepare_data(task, variant, params)
    model = mlflow.keras.load_model(f"models:/{result.model_id}")
    val_loss = model.evaluate(splits.x_val, splits.y_val, verbose=0, return_dict=True)["loss"]
    losses = [m.value for m in store.get_metric_history(result.run_id, "val_loss")]
    assert val_loss == pytest.approx(losses[best - 1], rel=1e-4) and val_loss != pytest.approx(losses[-1], rel=1e-4)
    # The latest checkpoint and the best one are kept.
    assert checkpoint_folders(store, result.run_id) == [checkpoints.folder(best), checkpoints.folder(stopped)]


def test_resume_goes_on_from_the_latest_checkpoint_when_early_stopping_kept_an_earlier_best(store, tiny):
    """The best epoch's checkpoint is kept beside the latest: resuming loads the latest's epoch and
    optimizer state and the best's weights for early stopping, each from its own files."""
    recipe = {"patience": 10}  # never stops these few epochs, but keeps the best
    reference = train(*tiny.params("churn", epochs=6, **recipe))
    run_id = train(*tiny.params("churn", epochs=4, **recipe)).run_id
    best = int(store.get_run(run_id).data.metrics["best_epoch"])
    assert best < 4, "the recipe's best epoch must come before its last for this test to mean anything"
    assert checkpoint_folders(store, run_id) == [checkpoints.folder(best), checkpoints.folder(4)]

    assert main(["train", *tiny.argv("churn", epochs=6, **recipe), "--resume", run_id]) == 0
    resumed = store.get_run(run_id)
    assert resumed.data.tags["resume.from_epoch"] == "4"
    assert steps(store, run_id, "val_loss") == list(range(6))
    for metric in ("val_loss", "loss"):
        values = [m.value for m in store.get_metric_history(run_id, metric)]
        assert values == [m.value for m in store.get_metric_history(reference.run_id, metric)], metric
    assert resumed.data.metrics["test_loss"] == reference.metrics["test_loss"]


def test_checkpoints_are_ordered_by_their_epoch_number_not_their_name(store, tiny, tmp_path):
    run_id = train(*tiny.params("churn", epochs=2)).run_id
    for epoch in (9999, 10000):  # as text, epoch-9999 sorts after epoch-10000
        copy_checkpoint(store, run_id, checkpoints.folder(2), epoch, tmp_path)
    assert checkpoints.latest(run_id).path == "checkpoints/epoch-10000"
    assert checkpoints.latest(run_id).epoch == 10000


def test_a_best_checkpoint_path_outside_the_run_checkpoints_is_never_followed(store, tiny, tmp_path, capsys):
    run_id = train(*tiny.params("churn", epochs=2)).run_id
    artifacts = Path(store.get_run(run_id).info.artifact_uri)
    outside = artifacts.parent / "outside"  # the run's folder, beyond its artifacts
    outside.mkdir()
    for name in (checkpoints.WEIGHTS_FILE, checkpoints.METADATA_FILE, checkpoints.STATE_FILE):
        shutil.copy(artifacts / checkpoints.folder(2) / name, outside / name)
    copy_checkpoint(store, run_id, checkpoints.folder(2), 3, tmp_path, best_path="../outside")

    found = checkpoints.latest(run_id)
    assert found.path == checkpoints.folder(2) and found.best_weights is None  # the tampered one is skipped
    assert f"{checkpoints.folder(3)} of run {run_id} names no checkpoint as its best" in capsys.readouterr().err


def test_resume_deletes_every_older_checkpoint_and_leaves_no_temporary_copy(store, tiny, tmp_path, monkeypatch):
    run_id = train(*tiny.params("churn", epochs=2)).run_id
    # What a kill between a checkpoint's completion and the deletion of the one before leaves.
    copy_checkpoint(store, run_id, checkpoints.folder(2), 1, tmp_path)
    assert checkpoint_folders(store, run_id) == [checkpoints.folder(1), checkpoints.folder(2)]
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))

    assert main(["train", *tiny.argv("churn", epochs=3), "--resume", run_id]) == 0
    assert checkpoint_folders(store, run_id) == [checkpoints.folder(3)]
    assert not list(scratch.iterdir())  # the downloaded checkpoint went with the resume


def test_a_run_stopped_before_its_first_checkpoint_trains_again_from_the_start(store, tiny):
    reference = train(*tiny.params("churn", epochs=2))
    tags = {"entry_point": "churn", "task": "churn", "variant": "mlp"}
    run_id = store.create_run(os.environ["MLFLOW_EXPERIMENT_ID"], tags=tags).info.run_id
    store.set_terminated(run_id, "KILLED")

    assert main(["train", *tiny.argv("churn", epochs=2), "--resume", run_id]) == 0
    resumed = store.get_run(run_id)
    assert resumed.info.status == "FINISHED" and resumed.data.tags["resume.from_epoch"] == "0"
    assert steps(store, run_id, "loss") == [0, 1]
    assert resumed.data.metrics["test_loss"] == reference.metrics["test_loss"]


def test_resume_by_run_id_alone_takes_the_run_entry_point_and_parameters(store, tiny, capsys):
    run_id = train(*tiny.params("churn", epochs=2, units=5)).run_id
    store.set_terminated(run_id, "KILLED")
    capsys.readouterr()

    assert main(["train", "--resume", run_id, "--epochs", "3"]) == 0
    said = capsys.readouterr().out.splitlines()
    assert said[0] == f"run {run_id} resumed from its checkpoint after epoch 2: it trains epoch 3"
    assert re.fullmatch(
        rf"run {run_id} finished: test_accuracy 0\.\d{{4}} \(95% interval 0\.\d{{4}} to [01]\.\d{{4}}\)", said[-1]
    )
    resumed = store.get_run(run_id)
    assert resumed.info.status == "FINISHED" and steps(store, run_id, "loss") == [0, 1, 2]
    # What it trained with is the run's, the epochs it was last given included.
    assert main(["train", "--resume", run_id, "--dry_run"]) == 0
    recipe = yaml.safe_load(capsys.readouterr().out)
    assert recipe["entry_point"] == "churn" and recipe["params"]["units"] == 5 and recipe["params"]["epochs"] == 3
    assert "units" in recipe["set_by"]["resumed run"] and recipe["set_by"]["command line"] == []


def test_under_mlflow_run_a_parameter_at_its_default_is_the_resumed_run_own(store, tiny, monkeypatch):
    """`mlflow run -e churn -P resume=<id>` passes every parameter of the entry point, each at its default."""
    run_id = train(*tiny.params("churn", epochs=2, units=5)).run_id
    task, variant = resolve("churn")
    passed = {name: str(param.default) for name, param in declared_params(task, variant).items()}
    monkeypatch.setenv("MLFLOW_RUN_ID", "the-launched-run")
    params = parse_params(task, variant, resume.own_params(run_id, task, variant, {**passed, "epochs": "4"}))
    assert params == parse_params(task, variant, tiny.overrides("churn", epochs=4, units=5))
    # `mlflow run` logs its values shell-quoted: '' for an empty one.
    tags = {"entry_point": "churn", "mlflow.project.entryPoint": "churn"}
    launched = store.create_run(os.environ["MLFLOW_EXPERIMENT_ID"], tags=tags).info.run_id
    for name, value in {"data": "/a folder/churn.csv", "optimizer": "adam", "units": "5"}.items():
        store.log_param(launched, name, shlex.quote(value))
    assert resume.own_params(launched, task, variant, {}) == {
        "data": "/a folder/churn.csv",
        "optimizer": "adam",
        "units": "5",
    }


def test_resume_finds_the_run_experiment_by_itself(store, tiny):
    argv = tiny.argv("churn", epochs=2)
    assert main(["train", *argv, "--experiment", "elsewhere"]) == 0
    (run,) = store.search_runs([store.get_experiment_by_name("elsewhere").experiment_id])
    store.set_terminated(run.info.run_id, "KILLED")

    assert main(["train", *tiny.argv("churn", epochs=3), "--resume", run.info.run_id]) == 0
    assert store.get_run(run.info.run_id).info.status == "FINISHED"
    assert store.get_experiment_by_name("churn") is None  # nothing created on the way


def test_a_second_resume_of_a_run_being_resumed_is_refused(store, tiny, capsys):
    """The first resume claims the run; a second, reading the run while the first is still
    starting it (this process, alive), is refused in one line and changes nothing."""
    run_id = train(*tiny.params("churn", epochs=2)).run_id
    store.set_terminated(run_id, "KILLED")
    task, variant, params = tiny.params("churn", epochs=3)
    digests = {c: d.digest for c, d in tracking.split_datasets(prepare_data(task, variant, params), "churn").items()}
    first = resume.resumption_of(run_id, task, variant, params, digests)
    assert first.checkpoint.epoch == 2 and store.get_run(run_id).data.params["resume.claim.1"].split()[1] == str(
        os.getpid()
    )
    capsys.readouterr()

    assert main(["train", *tiny.argv("churn", epochs=3), "--resume", run_id]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: resume: run {run_id} is being resumed by process {os.getpid()} on ")
    assert store.get_run(run_id).info.status == "KILLED" and steps(store, run_id, "loss") == [0, 1]


@pytest.mark.slow
def test_of_two_resumes_started_at_once_one_trains_and_the_other_is_refused(store, slow_mnist):
    argv = ["--task", "mnist_cnn", *options(**{**KILL_RECIPE, "epochs": 2, "data": slow_mnist})]
    assert main(["train", *argv]) == 0
    (run,) = runs(store)
    store.set_terminated(run.info.run_id, "KILLED")
    command = [sys.executable, "-m", "pipelines", "train", *argv[:-2], *options(epochs=3, data=slow_mnist)]
    resumes = [
        start([*command, "--resume", run.info.run_id], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = sorted((process.wait(timeout=300), process.stderr.read()) for process in resumes)

    (trained, _), (refused, err) = results
    assert (trained, refused) == (0, 2), err[-3000:]
    # Refused while the other is claiming the run, or once it trains.
    refusal = f"error: resume: run {run.info.run_id} is (being resumed by|RUNNING, its process) "
    assert re.match(refusal, err.strip().splitlines()[-1]), err[-3000:]
    assert steps(store, run.info.run_id, "loss") == [0, 1, 2]  # each epoch trained and logged once
    models = mlflow.search_logged_models(filter_string=f"source_run_id = '{run.info.run_id}'", output_format="list")
    assert len(models) == 1  # the resume's: the interrupted run's own model went with it


def copy_checkpoint(client, run_id, source, epoch, tmp_path, best_path=None):
    """Log a copy of the run's checkpoint in folder `source` as the checkpoint of `epoch`."""
    folder = tmp_path / f"copy-{epoch}"
    folder.mkdir()
    for name in (checkpoints.WEIGHTS_FILE, checkpoints.METADATA_FILE, checkpoints.STATE_FILE):
        client.download_artifacts(run_id, f"{source}/{name}", str(folder))
    state = json.loads((folder / checkpoints.STATE_FILE).read_text())
    state["epoch"] = epoch
    if best_path:
        state["early_stopping"] = {"wait": 0, "best": 0.5, "best_epoch": 0, "path": best_path}
    (folder / checkpoints.STATE_FILE).write_text(json.dumps(state))
    for name in (checkpoints.WEIGHTS_FILE, checkpoints.METADATA_FILE, checkpoints.STATE_FILE):
        client.log_artifact(run_id, str(folder / name), checkpoints.folder(epoch))
