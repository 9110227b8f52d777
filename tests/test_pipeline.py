"""Every entry point trains through the one pipeline into a real MLflow store (1 epoch, tiny data)."""

import json
import threading
import warnings

import keras
import mlflow
import numpy as np
import pytest
from PIL import Image, ImageFilter
from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

from experiments import RunFailed, entry_points
from experiments.churn import load_churn
from experiments.emotion import average_over_views, emotion_vgg, load_fer2013
from experiments.linear import load_line
from experiments.mnist import average_over_shifts, conv_net, load_mnist
from experiments.views import mirror, shift
from pipelines.data import prepare_data
from pipelines.reporting import read_predictions
from pipelines.schema import PREDICTIONS_ARTIFACT
from pipelines.significance import metric_of
from pipelines.tracking import log_inputs_racing, split_datasets
from pipelines.train import (
    STEPS_PER_EXECUTION,
    ShuffledBatches,
    build_model,
    evaluate_model,
    fit_model,
    train,
)
from tests.helpers import runs


def logged_model(result):
    return mlflow.keras.load_model(f"models:/{result.model_id}")


def one_per_task(names):
    """Each task's default entry point in the in-process tier; its other variants are `slow`."""
    for name in sorted(names):
        task, variant = entry_points()[name]
        yield pytest.param(name, marks=() if variant == task.default_variant else pytest.mark.slow)


@pytest.mark.parametrize("name", one_per_task(entry_points()))
def test_every_entry_point_trains_and_logs_a_complete_run(name, store, tiny):
    task, variant, params = tiny.params(name)
    result = train(task, variant, params)

    run = store.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["task"] == task.name and run.data.tags["variant"] == variant
    assert run.data.params["seed"] == "42" and run.data.params["epochs"] == "1"
    for knob in task.variants[variant].knobs:  # the model was built from its logged knobs
        assert run.data.params[knob] == str(params[knob]), knob
    assert task.primary_metric in run.data.metrics and "loss" in run.data.metrics  # test and per-epoch
    assert len(store.get_metric_history(run.info.run_id, "epoch_time_s")) == 1
    artifacts = {a.path for a in store.list_artifacts(run.info.run_id, "figures")}
    assert "figures/learning_curves.png" in artifacts
    assert ("figures/confusion_matrix.png" in artifacts) == (task.kind != "regression")
    assert "model_summary.txt" in {a.path for a in store.list_artifacts(run.info.run_id)}
    contexts = {inp.dataset.name: inp.dataset.digest for inp in run.inputs.dataset_inputs}
    assert f"{task.name}-train" in contexts and f"{task.name}-test" in contexts
    assert run.data.tags["dataset_digest"] == contexts[f"{task.name}-train"]
    validates = params["validation_fraction"] > 0 or task.name == "emotion"  # FER2013's PublicTest validates
    assert (f"{task.name}-validation" in contexts) == validates
    # The headline metric's 95% interval, and the test predictions that pair this run with another.
    metric = run.data.metrics[task.primary_metric]
    low, high = (run.data.metrics[f"{task.primary_metric}_ci_{end}"] for end in ("low", "high"))
    assert low <= metric <= high and low < high
    local = mlflow.artifacts.download_artifacts(run_id=result.run_id, artifact_path=PREDICTIONS_ARTIFACT)
    predictions = read_predictions(local)
    assert predictions["kind"] == task.kind and predictions["test_digest"] == contexts[f"{task.name}-test"]
    assert metric_of(task.kind, predictions["truth"], predictions["predicted"]) == pytest.approx(metric, rel=1e-4)
    if task.kind == "multiclass":  # a recall per class, named after it
        labels = mlflow.artifacts.load_dict(f"runs:/{result.run_id}/evaluation/confusion_matrix.json")["labels"]
        assert {m for m in run.data.metrics if m.startswith("test_recall_")} == {f"test_recall_{n}" for n in labels}

    model = mlflow.pyfunc.load_model(f"models:/{result.model_id}")
    assert model.metadata.signature is not None and model.metadata.saved_input_example_info is not None
    assert store.get_logged_model(result.model_id).source_run_id == result.run_id
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        logged = logged_model(result)
    assert not [str(w.message) for w in caught if "Skipping variable loading" in str(w.message)]  # loads whole
    if task.variants[variant].serve:  # served averaged over views, by the logged model itself
        images = np.random.default_rng(0).integers(0, 256, (4, *logged.input_shape[1:])).astype("float32")
        if task.name == "emotion":  # a face and its mirror get the same answer
            np.testing.assert_array_equal(model.predict(images), model.predict(images[:, :, ::-1]))
        (logged,) = (layer for layer in logged.layers if layer.trainable_weights)  # the trained net inside
        assert not np.allclose(model.predict(images), logged.predict(images, verbose=0))  # not the net alone
    assert int(run.data.params["num_params"]) == logged.count_params()


def test_classifier_metrics_are_the_logged_models_on_the_test_split(store, tiny, churn_csv):
    result = train(*tiny.params("churn", epochs=3))
    splits = load_churn(churn_csv, seed=42)
    scores = logged_model(result).predict(splits.x_test, verbose=0)[:, 0]
    predicted = (scores > 0.5).astype(int)
    expected = {
        "test_accuracy": np.mean(predicted == splits.y_test),
        "test_roc_auc": roc_auc_score(splits.y_test, scores),
        "test_precision": precision_score(splits.y_test, predicted, zero_division=0),
        "test_recall": recall_score(splits.y_test, predicted, zero_division=0),
        "test_f1": f1_score(splits.y_test, predicted, zero_division=0),
    }
    logged = store.get_run(result.run_id).data.metrics
    for metric, value in expected.items():
        assert logged[metric] == pytest.approx(value, abs=1e-6), metric
    matrix = json.loads(mlflow.artifacts.load_text(f"runs:/{result.run_id}/evaluation/confusion_matrix.json"))
    assert matrix["labels"] == ["stays", "exits"]
    assert np.array(matrix["matrix"])[1].tolist() == [int(sum(predicted[splits.y_test == 1] == v)) for v in (0, 1)]
    assert np.array(matrix["matrix"]).sum() == 40


@pytest.mark.slow
def test_augment_reports_accuracy_on_inverted_images(store, tiny, mnist_npz):
    result = train(*tiny.params("mnist_cnn_augment"))
    splits = load_mnist(mnist_npz, seed=42)
    predicted = logged_model(result).predict(255 - splits.x_test, verbose=0).argmax(axis=1)
    assert result.metrics["test_accuracy_inverted"] == pytest.approx(np.mean(predicted == splits.y_test))
    (train_input,) = [i for i in store.get_run(result.run_id).inputs.dataset_inputs if i.dataset.name == "mnist-train"]
    assert json.loads(train_input.dataset.profile)["features_shape"][0] == 2 * 108  # 120 less validation, doubled


def test_linear_logs_the_learned_line(store, tiny):
    result = train(*tiny.params("linear", epochs=2))
    weight, bias = logged_model(result).layers[-1].get_weights()
    logged = store.get_run(result.run_id).data.metrics
    assert logged["learned_weight"] == pytest.approx(float(weight[0, 0])) and weight[0, 0] != 0
    assert logged["learned_bias"] == pytest.approx(float(bias[0]))
    splits = load_line(None, seed=42)
    errors = logged_model(result).predict(splits.x_test, verbose=0)[:, 0] - splits.y_test[:, 0]
    assert logged["test_mse"] == pytest.approx(float(np.mean(errors**2)), rel=1e-5)


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_runs_logging_the_same_new_dataset_at_once_all_record_it(backend, store, request, monkeypatch):
    """Sweep workers start trials together, and MLflow looks a dataset up before inserting it:
    without the retry, most rounds of this race fail an insert on the datasets' unique key."""
    if backend == "postgres":
        monkeypatch.delenv("MLFLOW_EXPERIMENT_ID")
        mlflow.set_tracking_uri(request.getfixturevalue("postgres_url"))
        mlflow.set_experiment("race")
        store = mlflow.MlflowClient()
    racers, rounds = 6, 5
    errors, run_ids = [], []

    def log_from_own_run(dataset, barrier):
        with mlflow.start_run() as run:  # MLflow's active run is per thread
            run_ids.append(run.info.run_id)
            barrier.wait()
            try:
                log_inputs_racing([dataset], contexts=["train"])
            except mlflow.MlflowException as error:
                errors.append(error)

    for round_ in range(rounds):
        dataset = mlflow.data.from_numpy(np.full((4, 2), round_, dtype="float32"), name=f"race-{round_}")
        barrier = threading.Barrier(racers, timeout=60)  # a racer that fails to start breaks it, not hangs it
        threads = [threading.Thread(target=log_from_own_run, args=(dataset, barrier)) for _ in range(racers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    assert errors == []
    for run_id in run_ids:
        (logged,) = store.get_run(run_id).inputs.dataset_inputs
        assert logged.dataset.name.startswith("race-") and {t.key: t.value for t in logged.tags} == {
            "mlflow.data.context": "train"
        }
    assert len(run_ids) == racers * rounds


@pytest.mark.parametrize("name", ["churn", "iris", "linear", "mnist_cnn"])
def test_the_test_split_stays_put_when_the_seed_changes(name, tiny):
    """Runs of a task are tested on the same examples whatever their `seed`, so they pair
    example by example; the validation split follows the seed; `split_seed` moves the test split."""

    def digests(**changes):
        task, variant, params = tiny.params(name, **changes)
        splits = prepare_data(task, variant, params)
        return {context: dataset.digest for context, dataset in split_datasets(splits, task.name).items()}

    first, reseeded, resplit = digests(seed=1), digests(seed=2), digests(seed=1, split_seed=7)
    assert first["test"] == reseeded["test"]
    assert first["validation"] != reseeded["validation"]
    if name != "mnist_cnn":  # MNIST's file fixes its test split
        assert resplit["test"] != first["test"]


@pytest.mark.slow
def test_same_seed_same_metrics_other_seed_other_metrics(store, tiny):
    first = train(*tiny.params("mnist_cnn", epochs=2))
    again = train(*tiny.params("mnist_cnn", epochs=2))
    other = train(*tiny.params("mnist_cnn", epochs=2, seed=7))
    assert first.metrics == again.metrics
    assert first.history == again.history
    assert first.history["loss"] != other.history["loss"]


def test_sweep_style_call_nests_under_an_active_run_and_takes_callbacks(store, tiny):
    import keras

    seen = []
    callback = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: seen.append(logs["loss"]))
    with mlflow.start_run(run_name="parent") as parent:
        result = train(*tiny.params("xor", epochs=3), callbacks=[callback], tags={"trial": "0"})
    child = store.get_run(result.run_id)
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id and child.data.tags["trial"] == "0"
    assert len(seen) == 3 and len(runs(store)) == 2


def test_diverging_training_fails_the_run_with_a_clear_error(store, tiny):
    with pytest.raises(RunFailed, match=r"learning_rate: training diverged \(loss (nan|inf) at epoch 1\)"):
        train(*tiny.params("linear", epochs=5, optimizer="sgd", learning_rate=1e12))
    (run,) = runs(store)
    assert run.info.status == "FAILED"


def _epoch(batches, epoch):
    batches.on_epoch_begin(epoch)  # as fit calls it
    return list(batches.dataset)


def test_shuffled_batches_cover_every_example_once_per_epoch_in_an_order_set_by_seed_and_epoch():
    features, targets = np.arange(10)[:, np.newaxis] * 10, np.arange(10)
    batches = ShuffledBatches(features, targets, batch_size=4, seed=1)
    epochs = [_epoch(batches, 0), _epoch(batches, 1)]
    assert [[len(y) for _, y in epoch] for epoch in epochs] == [[4, 4, 2], [4, 4, 2]]
    assert all((x.numpy()[:, 0] == y.numpy() * 10).all() for epoch in epochs for x, y in epoch)
    first, second = ([int(v) for _, y in epoch for v in y] for epoch in epochs)
    assert sorted(first) == sorted(second) == list(range(10))
    assert first != second  # reshuffled every epoch
    # A fresh pipeline (a resumed training) gives epoch 1 the same order, without running epoch 0.
    again = ShuffledBatches(features, targets, 4, seed=1)
    assert [int(v) for _, y in _epoch(again, 1) for v in y] == second
    other_seed = ShuffledBatches(features, targets, 4, seed=2)
    assert [int(v) for _, y in _epoch(other_seed, 1) for v in y] != second
    assert batches.dataset.cardinality() == 3  # known: Keras sizes its epochs and progress by it


@pytest.mark.parametrize("name, batch_size", [("xor", "1"), ("churn", "7")])
def test_an_epoch_is_one_pass_over_the_training_data(name, batch_size, tiny):
    """steps_per_execution (32) runs several steps per call; an epoch still ends with the data."""
    epochs = 3
    task, variant, params = tiny.params(name, epochs=epochs, batch_size=batch_size)
    splits = prepare_data(task, variant, params)
    steps_per_epoch = -(-len(splits.x_train) // params["batch_size"])
    assert steps_per_epoch % STEPS_PER_EXECUTION != 0  # the last call of each epoch runs short
    model = build_model(task, variant, params, splits)
    fit_model(model, splits, params)
    assert int(model.optimizer.iterations) == epochs * steps_per_epoch


@pytest.mark.parametrize("name", ["mnist_cnn_l2", "linear", "churn"])
def test_one_prediction_pass_gives_the_metrics_keras_evaluate_gives(name, tiny):
    """Loss with the L2 penalty, accuracy or MAE: as model.evaluate computes them, without its extra pass."""
    task, variant, params = tiny.params(name)
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


@pytest.mark.parametrize(("blurred", "split"), [("train", "training"), ("test", "test")])
def test_loader_warns_when_training_and_test_faces_differ_in_sharpness(blurred, split, fer_folder, capsys):
    load_fer2013(fer_folder, seed=0)
    assert "sharpness" not in capsys.readouterr().err
    for path in (fer_folder / blurred).rglob("*.jpg"):
        with Image.open(path) as image:
            image.filter(ImageFilter.GaussianBlur(3)).save(path)
    load_fer2013(fer_folder, seed=0)
    warning = capsys.readouterr().err
    assert "training and test images differ in sharpness" in warning and str(fer_folder) in warning
    assert f"the {split} images are blurrier" in warning


def test_view_averaging_moves_and_mirrors_exactly_and_answers_alike_for_a_face_and_its_mirror():
    faces = np.random.default_rng(0).integers(0, 256, (8, 48, 48, 1)).astype("float32")
    np.testing.assert_array_equal(mirror((48, 48, 1)).predict(faces, verbose=0), faces[:, :, ::-1])
    edged = np.pad(faces, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="edge")
    moved = {
        "down": edged[:, :48, 2:50],
        "up": edged[:, 4:, 2:50],
        "right": edged[:, 2:50, :48],
        "left": edged[:, 2:50, 4:],
    }
    for (axis, offset), name in zip(((0, 2), (0, -2), (1, 2), (1, -2)), moved, strict=True):
        np.testing.assert_array_equal(shift((48, 48, 1), axis, offset, name).predict(faces, verbose=0), moved[name])
    net = emotion_vgg((48, 48, 1), 7, filters=4, units=8, dropout=0.0)
    served = average_over_views(net)
    answers, mirrored_answers = (served.predict(x, verbose=0) for x in (faces, faces[:, :, ::-1]))
    np.testing.assert_array_equal(answers, mirrored_answers)
    views = [faces, *moved.values()]
    expected = np.mean([net.predict(x, verbose=0) for view in views for x in (view, view[:, :, ::-1])], axis=0)
    np.testing.assert_allclose(answers, expected, rtol=1e-5)
    assert not np.allclose(net.predict(faces, verbose=0), expected)  # the net alone is not symmetric


def test_digit_views_average_the_net_over_the_digit_moved_one_pixel_in_eight_directions():
    digits = np.random.default_rng(0).integers(0, 256, (6, 28, 28, 1)).astype("float32")
    knobs = {"filters": 4, "units": 8, "conv_dropout": 0.0, "dropout": 0.0, "l1": 0, "l2": 0, "shift": 0}
    net = conv_net((28, 28, 1), 10, batch_norm=True, **knobs)
    edged = np.pad(digits, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    views = [edged[:, 1 - down : 29 - down, 1 - right : 29 - right] for down in (-1, 0, 1) for right in (-1, 0, 1)]
    expected = np.mean([net.predict(view, verbose=0) for view in views], axis=0)
    np.testing.assert_allclose(average_over_shifts(net).predict(digits, verbose=0), expected, rtol=1e-5, atol=1e-7)
    assert not np.allclose(net.predict(digits, verbose=0), expected, rtol=1e-5, atol=1e-7)


def test_conv_net_without_batch_norm_is_the_tutorials_network():
    """Our blocks pool before their ReLU; given the same weights, they answer exactly as the
    tutorial's conv-relu-pool layers do, and they hold its 93,322 weights."""
    knobs = {"filters": 32, "units": 64, "conv_dropout": 0.0, "dropout": 0.0, "l1": 0, "l2": 0, "shift": 0}
    net = conv_net((28, 28, 1), 10, batch_norm=False, **knobs)
    tutorial = keras.Sequential(
        [
            keras.Input(shape=(28, 28, 1)),
            keras.layers.Conv2D(32, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(64, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(64, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    assert net.count_params() == tutorial.count_params() == 93_322
    tutorial.set_weights(net.get_weights())
    digits = np.random.default_rng(0).integers(0, 256, (8, 28, 28, 1)).astype("float32")
    np.testing.assert_allclose(net.predict(digits, verbose=0), tutorial.predict(digits / 255, verbose=0), atol=1e-6)
