"""Every entry point trains through the one pipeline into a real MLflow store (1 epoch, tiny data)."""

import json

import mlflow
import numpy as np
import pytest
from PIL import Image, ImageFilter

from experiments import entry_points, resolve
from experiments.emotion import load_fer2013
from pipelines.params import parse_params
from pipelines.train import (
    STEPS_PER_EXECUTION,
    build_model,
    evaluate_model,
    fit_model,
    prepare_data,
    train,
    training_batches,
)
from tests.helpers import runs

QUICK = {"epochs": "1", "batch_size": "16"}


def quick_params(name, data=None, **overrides):
    task, variant = resolve(name)
    values = {**QUICK, **overrides}
    if data is not None:
        values["data"] = str(data)
    return task, variant, parse_params(task, variant, values)


@pytest.fixture
def data_for(mnist_npz, churn_csv, fer_folder):
    return {"mnist": mnist_npz, "churn": churn_csv, "emotion": fer_folder}


@pytest.mark.parametrize("name", sorted(entry_points()))
def test_every_entry_point_trains_and_logs_a_complete_run(name, store, data_for):
    task, variant, params = quick_params(name, data_for.get(resolve(name)[0].name))
    result = train(task, variant, params)

    run = store.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["task"] == task.name and run.data.tags["variant"] == variant
    assert run.data.params["seed"] == "42" and run.data.params["epochs"] == "1"
    assert int(run.data.params["num_params"]) > 0
    assert task.primary_metric in run.data.metrics and "loss" in run.data.metrics  # autologged
    assert len(store.get_metric_history(run.info.run_id, "epoch_time_s")) == 1
    artifacts = {a.path for a in store.list_artifacts(run.info.run_id, "figures")}
    assert "figures/learning_curves.png" in artifacts
    assert ("figures/confusion_matrix.png" in artifacts) == (task.kind != "regression")
    assert "model_summary.txt" in {a.path for a in store.list_artifacts(run.info.run_id)}
    contexts = {inp.dataset.name: inp.dataset.digest for inp in run.inputs.dataset_inputs}
    assert f"{task.name}-train" in contexts and f"{task.name}-test" in contexts
    assert run.data.tags["dataset_digest"] == contexts[f"{task.name}-train"]

    model = mlflow.pyfunc.load_model(f"models:/{result.model_id}")
    assert model.metadata.signature is not None and model.metadata.saved_input_example_info is not None
    assert store.get_logged_model(result.model_id).source_run_id == result.run_id


def test_classifier_metrics_and_confusion_matrix(store, churn_csv):
    result = train(*quick_params("churn", churn_csv, epochs="3"))
    for metric in ("test_accuracy", "test_roc_auc", "test_precision", "test_recall", "test_f1"):
        assert 0 <= result.metrics[metric] <= 1
    matrix = json.loads(mlflow.artifacts.load_text(f"runs:/{result.run_id}/evaluation/confusion_matrix.json"))
    assert np.array(matrix["matrix"]).sum() == 40 and matrix["labels"] == ["stays", "exits"]


def test_emotion_logs_per_class_recall(store, fer_folder):
    result = train(*quick_params("emotion_cnn", fer_folder))
    recalls = [key for key in result.metrics if key.startswith("test_recall_")]
    assert sorted(recalls) == sorted(
        f"test_recall_{n}" for n in ("Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral")
    )
    datasets = {inp.dataset.name for inp in store.get_run(result.run_id).inputs.dataset_inputs}
    assert datasets == {"emotion-train", "emotion-validation", "emotion-test"}  # PublicTest validates


def test_augment_reports_accuracy_on_inverted_images(store, mnist_npz):
    result = train(*quick_params("mnist_cnn_augment", mnist_npz))
    assert 0 <= result.metrics["test_accuracy_inverted"] <= 1


def test_linear_logs_the_learned_line(store):
    result = train(*quick_params("linear", epochs="2"))
    assert {"learned_weight", "learned_bias", "test_mse"} <= set(result.metrics)


def test_same_seed_same_metrics_other_seed_other_metrics(store, mnist_npz):
    first = train(*quick_params("mnist_cnn", mnist_npz, epochs="2"))
    again = train(*quick_params("mnist_cnn", mnist_npz, epochs="2"))
    other = train(*quick_params("mnist_cnn", mnist_npz, epochs="2", seed="7"))
    assert first.metrics == again.metrics
    assert first.history == again.history
    assert first.history["loss"] != other.history["loss"]


def test_sweep_style_call_nests_under_an_active_run_and_takes_callbacks(store):
    import keras

    seen = []
    callback = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: seen.append(logs["loss"]))
    with mlflow.start_run(run_name="parent") as parent:
        result = train(*quick_params("xor", epochs="3"), callbacks=[callback], tags={"trial": "0"})
    child = store.get_run(result.run_id)
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id and child.data.tags["trial"] == "0"
    assert len(seen) == 3 and len(runs(store)) == 2


def test_diverging_training_fails_the_run_with_a_clear_error(store):
    from experiments import InputError

    with pytest.raises(InputError, match=r"learning_rate: training diverged \(loss (nan|inf) at epoch 1\)"):
        train(*quick_params("linear", epochs="5", optimizer="sgd", learning_rate="1e12"))
    (run,) = runs(store)
    assert run.info.status == "FAILED"


def test_training_batches_cover_every_example_once_per_epoch_reshuffled():
    features, targets = np.arange(10)[:, np.newaxis] * 10, np.arange(10)
    batches = training_batches(features, targets, batch_size=4, seed=1)
    epochs = [list(batches), list(batches)]
    assert [[len(y) for _, y in epoch] for epoch in epochs] == [[4, 4, 2], [4, 4, 2]]
    assert all((x.numpy()[:, 0] == y.numpy() * 10).all() for epoch in epochs for x, y in epoch)
    first, second = ([int(v) for _, y in epoch for v in y] for epoch in epochs)
    assert sorted(first) == sorted(second) == list(range(10))
    assert first != second  # reshuffled every epoch
    again = [int(v) for _, y in training_batches(features, targets, 4, seed=1) for v in y]
    assert again == first  # the same seed, the same order


@pytest.mark.parametrize("name, batch_size", [("xor", "1"), ("churn", "7")])
def test_an_epoch_is_one_pass_over_the_training_data(name, batch_size, churn_csv):
    """steps_per_execution (32) runs several steps per call; an epoch still ends with the data."""
    epochs = 3
    task, variant, params = quick_params(
        name, churn_csv if name == "churn" else None, epochs=str(epochs), batch_size=batch_size
    )
    splits = prepare_data(task, variant, params)
    steps_per_epoch = -(-len(splits.x_train) // params["batch_size"])
    assert steps_per_epoch % STEPS_PER_EXECUTION != 0  # the last call of each epoch runs short
    model = build_model(task, variant, params, splits)
    fit_model(model, splits, params)
    assert int(model.optimizer.iterations) == epochs * steps_per_epoch


@pytest.mark.parametrize("name", ["mnist_cnn_l2", "linear", "churn"])
def test_one_prediction_pass_gives_the_metrics_keras_evaluate_gives(name, mnist_npz, churn_csv):
    """Loss with the L2 penalty, accuracy or MAE: as model.evaluate computes them, without its extra pass."""
    task, variant, params = quick_params(
        name, {"mnist": mnist_npz, "churn": churn_csv}.get(resolve(name)[0].name)
    )
    splits = prepare_data(task, variant, params)
    model = build_model(task, variant, params, splits)
    metrics, matrix, outputs = evaluate_model(model, task, variant, splits)
    expected = model.evaluate(splits.x_test, splits.y_test, verbose=0, return_dict=True)
    assert metrics["test_loss"] == pytest.approx(expected["loss"], rel=1e-4)
    for metric in ("accuracy", "mae"):
        if metric in expected:
            assert metrics[f"test_{metric}"] == pytest.approx(expected[metric], rel=1e-4)
    assert len(outputs) == len(splits.y_test)
    assert (matrix is None) == (task.kind == "regression")


def test_loader_warns_when_training_faces_are_blurrier_than_test_faces(fer_folder, capsys):
    load_fer2013(fer_folder, seed=0)
    assert "blurrier" not in capsys.readouterr().err
    for path in (fer_folder / "train").rglob("*.jpg"):
        with Image.open(path) as image:
            image.filter(ImageFilter.GaussianBlur(3)).save(path)
    load_fer2013(fer_folder, seed=0)
    warning = capsys.readouterr().err
    assert "training images are blurrier than test images" in warning and str(fer_folder) in warning
