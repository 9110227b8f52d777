"""The model registry: promote with a champion gate, compare versions, serve the champion, the whole loop."""

import json
import os
import signal
import subprocess
import tempfile
import threading
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import requests
from PIL import Image

from experiments.mnist import load_mnist
from pipelines.cli import main, parse_command_line
from pipelines.registry import PROMOTE_EXPERIMENT, SERVING_ADDRESS, promotion_lock, run_promotion
from pipelines.tracking import INPUT_EXAMPLE_ROWS
from tests.conftest import TinyRecipe, open_store, restore_store, write_mnist_npz
from tests.helpers import PROJECT, free_port, mlflow_run, runs, wait_until_serving

MODEL = "mnist_cnn"
GOOD, BAD = "0.01", "0.000001"  # a learning rate that learns the tiny digits, and one that cannot
LOCK_WAIT_S = 2  # how long a second promotion is shown to wait for the lock


def train_cnn(tiny, learning_rate, entry_point=MODEL, **changes):
    """A finished run of the tiny recipe (3 epochs at a constant `learning_rate`)."""
    recipe = tiny.argv(entry_point, epochs=3, lr_schedule="constant", learning_rate=learning_rate, **changes)
    assert main(["train", *recipe]) == 0
    (run,) = [r for r in mlflow.search_runs(output_format="list", order_by=["start_time DESC"], max_results=1)]
    return run


def promote(*args):
    return main(["promote", "--task", MODEL, *map(str, args)])


def promotions(client):
    """The promote runs: in an experiment of their own, not among the training runs."""
    assert not [r for r in runs(client) if r.data.tags.get("step") == "promote"]
    experiment = client.get_experiment_by_name(PROMOTE_EXPERIMENT)
    return client.search_runs([experiment.experiment_id]) if experiment else []


def versions(client, name=MODEL):
    return sorted(client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version))


def numbers(found):
    return [str(v.version) for v in found]


def alias_version(client, alias, name=MODEL):
    return str(client.get_model_version_by_alias(name, alias).version)


@pytest.fixture(scope="module")
def trained_pair(migrated_store, tmp_path_factory):
    """A store snapshot holding two finished mnist_cnn runs, one that learned and one that did
    not: (database, good run id, bad run id). Trained once; each test gets its own copy."""
    folder = tmp_path_factory.mktemp("trained_pair")
    with pytest.MonkeyPatch.context() as monkeypatch:
        open_store(folder, migrated_store, monkeypatch)
        tiny = TinyRecipe({"mnist": write_mnist_npz(folder / "mnist.npz")})
        good, bad = train_cnn(tiny, GOOD), train_cnn(tiny, BAD)
    mlflow.set_tracking_uri(None)
    assert good.data.metrics["test_accuracy"] > bad.data.metrics["test_accuracy"]
    return folder / "mlflow.db", good.info.run_id, bad.info.run_id


@pytest.fixture
def good_and_bad(store, trained_pair):
    """The two runs of `trained_pair`, in this test's store: (good, bad)."""
    snapshot, good, bad = trained_pair
    restore_store(snapshot, store)
    return store.get_run(good), store.get_run(bad)


# --- promote ----------------------------------------------------------------------------


def test_promote_gates_the_champion_describes_the_decision_and_is_idempotent(store, good_and_bad, capsys):
    good, bad = good_and_bad
    good_accuracy, bad_accuracy = (run.data.metrics["test_accuracy"] for run in (good, bad))

    # The first version becomes champion: there is none to beat.
    assert promote("--run_id", bad.info.run_id) == 0
    (first,) = versions(store)
    assert alias_version(store, "champion") == alias_version(store, "challenger") == str(first.version)
    low, high = (bad.data.metrics[f"test_accuracy_ci_{end}"] for end in ("low", "high"))
    assert first.run_id == bad.info.run_id and first.tags == {
        "test_accuracy": f"{bad.data.metrics['test_accuracy']:.6g}",
        "interval": f"{low:.4f}-{high:.4f}",
        "decision": "champion",
        "git_commit": bad.data.tags["mlflow.source.git.commit"],
    }
    assert first.description == (
        f"**Promoted to champion**: no champion yet; test_accuracy {bad.data.metrics['test_accuracy']:.4f} "
        f"(95% interval {low:.4f} to {high:.4f}).\n\n"
        f"Trained by run [{bad.info.run_name}](#/experiments/{bad.info.experiment_id}/runs/{bad.info.run_id})."
    )

    # Without a run id, the best run is picked; it beats the champion and takes the alias.
    capsys.readouterr()
    assert promote() == 0
    out = capsys.readouterr().out
    second = versions(store)[-1]
    assert second.run_id == good.info.run_id
    assert alias_version(store, "champion") == alias_version(store, "challenger") == str(second.version)
    assert second.tags["decision"] == "champion" and second.tags["compared_with"] == str(first.version)
    assert float(second.tags["p_value"]) < 0.05 and "promoted: test_accuracy" in out
    # Its page says why, against what, and links the run it came from.
    assert second.description.startswith(f"**Promoted to champion**: test_accuracy {good_accuracy:.4f} (95%")
    assert f"against champion version {first.version}'s {bad_accuracy:.4f}" in second.description
    assert "a significant win (p < alpha 0.05); McNemar's exact test" in second.description
    assert f"/runs/{good.info.run_id})." in second.description
    assert f"{good_accuracy:.4f}" in out and f"{bad_accuracy:.4f}" in out

    # Re-promoting the worse run: no new version; it is the challenger, the champion stays.
    assert promote("--run_id", bad.info.run_id) == 0
    out = capsys.readouterr().out
    assert numbers(versions(store)) == numbers([first, second])
    assert alias_version(store, "champion") == str(second.version)
    assert alias_version(store, "challenger") == str(first.version)
    assert "not registered again" in out and "kept the champion" in out
    again = store.get_model_version(MODEL, first.version)
    assert again.tags["decision"] == "challenger" and again.tags["compared_with"] == str(second.version)
    assert again.description.startswith(f"**Challenger**, the champion stayed version {second.version}: test_accur")

    # Each promotion is its own finished run that records its decision, and no metric to rank it as a model.
    promote_runs = promotions(store)
    assert len(promote_runs) == 3 and {r.info.status for r in promote_runs} == {"FINISHED"}
    assert [r.data.metrics for r in promote_runs] == [{}, {}, {}]
    assert sorted(r.data.tags["promotion.decision"] for r in promote_runs) == ["challenger", "champion", "champion"]


def test_the_champion_must_win_by_more_than_the_margin(store, good_and_bad):
    good, bad = good_and_bad
    assert promote("--run_id", bad.info.run_id) == 0
    gap = good.data.metrics["test_accuracy"] - bad.data.metrics["test_accuracy"]
    assert promote("--run_id", good.info.run_id, "--margin", gap + 0.01) == 0
    assert alias_version(store, "champion") == "1" and alias_version(store, "challenger") == "2"


@pytest.mark.slow
def test_a_champion_tested_on_other_data_is_evaluated_again_on_the_challengers(store, tiny, mnist_npz, tmp_path):
    other = tmp_path / "other.npz"  # the same digits, another test split
    with np.load(mnist_npz) as arrays:
        data = dict(arrays)
    np.savez(other, **{**data, "x_test": data["x_test"][:20], "y_test": data["y_test"][:20]})
    champion = train_cnn(tiny, GOOD)
    challenger = train_cnn(tiny, BAD, data=other)
    assert promote("--run_id", champion.info.run_id) == 0
    assert promote("--run_id", challenger.info.run_id) == 0
    description = store.get_model_version(MODEL, "2").description
    assert "evaluated again on this run's test data" in description and "the champion stayed version 1" in description


def test_a_second_promotion_waits_for_the_first_and_gates_against_its_version(store, good_and_bad):
    good, bad = good_and_bad
    decided = {}
    settings = parse_command_line(["promote", "--task", MODEL, "--run_id", good.info.run_id]).settings
    second = threading.Thread(target=lambda: decided.update(second=run_promotion(**settings)[0]), daemon=True)
    with promotion_lock(MODEL):  # the first promotion holds the lock...
        second.start()
        second.join(timeout=LOCK_WAIT_S)
        assert second.is_alive() and versions(store) == []  # ...the second waits, registering nothing
        assert promote("--run_id", bad.info.run_id) == 0  # the first registers (the lock is re-entrant)
    second.join(timeout=300)
    first, then = versions(store)
    assert first.run_id == bad.info.run_id and then.run_id == good.info.run_id
    assert decided["second"].version == str(then.version)
    assert f"against champion version {first.version}'s" in decided["second"].reason  # it saw the first's version
    assert alias_version(store, "champion") == str(then.version)


def leftover_run(client, entry_point, with_metric, status):
    """A real run as a crashed or interrupted training leaves it: its tags, maybe its metric, no model."""
    experiment_id = client.get_experiment_by_name("tests").experiment_id
    tags = {"entry_point": entry_point, "task": "mnist", "variant": "cnn"}
    run_id = client.create_run(experiment_id, tags=tags).info.run_id
    if with_metric:
        client.log_metric(run_id, "test_accuracy", 0.9)
    client.set_terminated(run_id, status)
    return run_id


WITH_RUN = ["--task", MODEL, "--run_id", "{run_id}"]


@pytest.mark.parametrize(
    ("argv", "leftover", "message"),
    [
        (["--task", MODEL], None, "error: task: no finished run of mnist_cnn with test_accuracy in the tracking store"),
        (["--task", "cifar"], None, "error: task: unknown task 'cifar'"),
        (WITH_RUN, (MODEL, False, "FAILED"), "error: run_id: run {run_id} has no test_accuracy metric"),
        (
            WITH_RUN,
            (MODEL, True, "FINISHED"),
            "error: run_id: run {run_id} has no logged model (its model failed to log)",
        ),
        (WITH_RUN, ("xor", True, "FINISHED"), "error: run_id: run {run_id} trained xor, not mnist_cnn"),
        ([*WITH_RUN, "--study", "digits"], (MODEL, True, "FINISHED"), "error: run_id: give run_id or study, not both"),
        (
            ["--task", MODEL, "--run_id", "0123456789abcdef"],
            None,
            "error: run_id: no run 0123456789abcdef in the tracking store",
        ),
        (["--task", MODEL, "--margin", "-1"], None, "error: margin: -1.0 is out of range"),
        (["--task", MODEL, "--study", "a'b"], None, "error: study: a'b is out of range"),
    ],
)
def test_bad_promotions_are_one_error_line_and_register_nothing(argv, leftover, message, store, capsys):
    run_id = leftover_run(store, *leftover) if leftover else ""
    assert main(["promote", *(word.format(run_id=run_id) for word in argv)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message.format(run_id=run_id)), err
    assert not store.search_registered_models()
    assert not promotions(store) and not [r for r in runs(store) if r.info.status == "RUNNING"]


# --- compare ----------------------------------------------------------------------------


@pytest.mark.slow
def test_compare_reports_versions_side_by_side(store, good_and_bad, tiny, tmp_path, capsys):
    good, bad = good_and_bad
    assert promote("--run_id", bad.info.run_id) == 0 and promote("--run_id", good.info.run_id) == 0
    train_cnn(tiny, GOOD, entry_point="mnist_cnn_bn")
    assert main(["promote", "--task", "mnist_cnn_bn"]) == 0

    output = tmp_path / "report.html"
    assert main(["compare", "--model", MODEL, "--output", str(output)]) == 0
    page = output.read_text()
    assert page.count("<td>mnist_cnn</td>") == 2 and "<td>challenger, champion</td>" in page
    assert page.count("<img") == 3  # test metric intervals, learning curves, confusion matrices
    assert "paired tests" in page and "better (p = " in page  # the good run against the bad, same test split
    for column in ("test_accuracy", "learning_rate", "num_params", "train_time_s", "latency_ms", "images_per_s"):
        assert f"<th>{column}</th>" in page
    comparisons = store.get_experiment_by_name("comparisons")  # an experiment of its own, not the training one
    (compare_run,) = store.search_runs([comparisons.experiment_id])
    assert compare_run.data.tags["step"] == "compare" and compare_run.info.status == "FINISHED"
    assert "comparison/report.html" in compare_run.data.tags["mlflow.note.content"]
    assert not [r for r in runs(store) if r.data.tags.get("step") == "compare"]
    artifacts = {a.path for a in store.list_artifacts(compare_run.info.run_id, "comparison")}
    assert artifacts == {
        f"comparison/{name}"
        for name in (
            *("report.html", "table.csv", "pairwise_tests.csv"),
            *("test_metric_intervals.png", "learning_curves.png", "confusion_matrices.png"),
        )
    }
    local = mlflow.artifacts.download_artifacts(run_id=compare_run.info.run_id, artifact_path="comparison")
    assert Image.open(f"{local}/confusion_matrices.png").size[0] > 600  # two matrices side by side
    table = mlflow.artifacts.load_text(f"runs:/{compare_run.info.run_id}/comparison/table.csv").splitlines()
    assert len(table) == 3 and table[0].startswith("model,version,aliases,test_accuracy")

    # Champions across variants: what batch norm bought.
    out = capsys.readouterr().out
    assert "test_accuracy 95%" in out and "paired tests on the same test examples" in out
    assert main(["compare", "--model", "mnist_cnn*@champion", "--output", str(tmp_path / "variants.html")]) == 0
    out = capsys.readouterr().out
    assert "mnist_cnn_bn" in out and out.count("champion") >= 2


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nope", "error: model: no model version 'nope' in the registry"),
        ("mnist_cnn@gold", "error: model: no model version 'mnist_cnn@gold'"),
        ("cifar*", "error: model: no registered model matches 'cifar*'"),
        ("", "error: model: give a registered model"),
        ("mnist_cnn'; --", "error: model: 'mnist_cnn'; --' is not name, name/version or name@alias"),
    ],
)
def test_compare_refuses_unknown_models(spec, message, store, capsys):
    assert main(["compare", "--model", spec]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message), err
    assert not [r for r in runs(store) if r.data.tags.get("step") == "compare"]


# --- serve ------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_champion_serves_with_the_commands_promote_prints_at_either_pixel_scale(store, good_and_bad, capsys):
    good, _ = good_and_bad
    capsys.readouterr()
    assert promote("--run_id", good.info.run_id) == 0
    said = capsys.readouterr().out.splitlines()
    port = str(free_port())  # the printed port may be taken on this machine
    serve, ask = (next(line for line in said if words in line).strip() for words in ("models serve", "| curl"))
    serve, ask = (command.replace(SERVING_ADDRESS, f"127.0.0.1:{port}") for command in (serve, ask))
    serve = serve.replace(f"--port {SERVING_ADDRESS.partition(':')[2]}", f"--port {port}")
    server = subprocess.Popen(
        serve, shell=True, cwd=PROJECT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    splits = load_mnist(Path(good.data.params["data"]), seed=int(good.data.params["split_seed"]))
    images = splits.x_test.astype("float32")
    try:
        wait_until_serving(f"http://127.0.0.1:{port}/ping", server, timeout=180)
        local = {**os.environ, "no_proxy": "127.0.0.1"}  # straight to the server, whatever proxy the environment names
        answer = subprocess.run(
            ["bash", "-c", ask], cwd=PROJECT, env=local, capture_output=True, text=True, timeout=120
        )
        raw, normalized, standardized = (
            ask_server(port, pixels) for pixels in (images, images / 255, (images - 33.3) / 78.6)
        )
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    predictions = np.array(json.loads(answer.stdout)["predictions"])
    assert predictions.shape == (INPUT_EXAMPLE_ROWS, 10)
    assert np.allclose(predictions.sum(axis=1), 1, atol=1e-4)  # softmax over the ten digits
    # 0-255 and 0-1 images get one answer, the one the run's test accuracy was measured on.
    assert raw.status_code == normalized.status_code == 200, (raw.text[:300], normalized.text[:300])
    raw, normalized = (np.array(reply.json()["predictions"]) for reply in (raw, normalized))
    np.testing.assert_allclose(normalized, raw, atol=1e-5)
    assert np.mean(raw.argmax(axis=1) == splits.y_test) == pytest.approx(good.data.metrics["test_accuracy"])
    # Standardized pixels are neither scale: refused, with the contract, not answered.
    assert standardized.status_code == 400
    assert "the model takes float32 pixels 0-255, or 0-1" in standardized.json()["message"]


def ask_server(port, images):
    return requests.post(
        f"http://127.0.0.1:{port}/invocations",
        json={"inputs": images.tolist()},
        proxies={"http": None},
        timeout=120,
    )


# --- the whole loop ---------------------------------------------------------------------


@pytest.mark.slow
def test_mlflow_run_workflow_sweeps_promotes_and_compares(store, tmp_path):
    journal = tmp_path / "optuna.journal"
    completed = mlflow_run("workflow", timeout=900, task="xor", n_trials=2, epochs=3, batch_size=2, storage=journal)
    assert completed.returncode == 0, completed.stderr[-3000:]
    by_step = {}
    for run in store.search_runs([e.experiment_id for e in store.search_experiments()]):
        by_step.setdefault(run.data.tags.get("mlflow.project.entryPoint"), []).append(run)
    (workflow,) = by_step["workflow"]
    (sweep,), (promotion,), (comparison,) = by_step["sweep"], by_step["promote"], by_step["compare"]
    for step in (sweep, promotion, comparison):
        assert step.info.status == "FINISHED"
        assert step.data.tags["mlflow.parentRunId"] == workflow.info.run_id
    # The sweep's runs beside the workflow's, in the task's experiment; promote's and compare's in their own.
    steps = {"workflow": workflow, "sweep": sweep, "promote": promotion, "compare": comparison}
    experiments = {step: store.get_experiment(run.info.experiment_id).name for step, run in steps.items()}
    assert experiments == {"workflow": "tests", "sweep": "tests", "promote": "promotions", "compare": "comparisons"}
    assert promotion.data.tags["workflow.sweep_run_id"] == sweep.info.run_id
    assert comparison.data.tags["workflow.promote_run_id"] == promotion.info.run_id
    assert workflow.data.tags["workflow.compare_run_id"] == comparison.info.run_id
    # The sweep step's run, created by MLflow's launcher before the step started, is the only
    # study run: the trials nest under it, with the training parameters the workflow passed on.
    assert [run.info.run_id for run in runs(store) if run.data.tags.get("sweep") == "study"] == [sweep.info.run_id]
    trials = [run for run in runs(store) if run.data.tags.get("sweep") == "trial"]
    assert sorted(int(run.data.tags["optuna.trial_number"]) for run in trials) == [0, 1]
    for run in trials:
        assert run.data.tags["mlflow.parentRunId"] == sweep.info.run_id
        assert run.data.params["epochs"] == "3" and run.data.params["batch_size"] == "2"

    champion = store.get_model_version_by_alias("xor", "champion")
    trial = store.get_run(champion.run_id)
    assert trial.data.tags["mlflow.parentRunId"] == sweep.info.run_id
    assert champion.tags["study"] == "xor" and champion.tags["trial"] == trial.data.tags["optuna.trial_number"]
    report = PROJECT / "reports" / "compare-xor.html"  # compare's default local file
    assert "<td>xor</td>" in report.read_text()
    report.unlink()


# --- the paired gate, on predictions with known disagreement counts -----------------------

TEST_EXAMPLES = 100


def scored_run(store, predicted, truth, entry_point=MODEL, test_inputs=None, params=None):
    """A finished run as training leaves it, with these test predictions: the metric and its
    interval, the predictions artifact, the test split as a dataset input, and a READY logged
    model (without files: a model the gate never has to load)."""
    from experiments import resolve
    from pipelines import schema, significance

    task, variant = resolve(entry_point)
    truth, predicted = np.asarray(truth), np.asarray(predicted)
    test_inputs = np.arange(len(truth)) if test_inputs is None else test_inputs
    metric = task.primary_metric
    tags = {"entry_point": entry_point, "task": task.name, "variant": variant}
    with mlflow.start_run(tags=tags) as run:
        dataset = mlflow.data.from_numpy(test_inputs.astype("float32"), targets=truth, name=f"{task.name}-test")
        mlflow.log_input(dataset, context="test")
        mlflow.log_params(params or {"seed": 42, "split_seed": 42})
        low, high = significance.interval_of(task.kind, truth, predicted)
        value = significance.metric_of(task.kind, truth, predicted)
        mlflow.log_metrics({metric: value, f"{metric}_ci_low": low, f"{metric}_ci_high": high})
        path = Path(tempfile.mkdtemp()) / "test_predictions.npz"
        np.savez_compressed(
            path, truth=truth, predicted=predicted, kind=np.array(task.kind), test_digest=np.array(dataset.digest)
        )
        mlflow.log_artifact(str(path), "evaluation")
        assert schema.PREDICTIONS_ARTIFACT == "evaluation/test_predictions.npz"
        model = mlflow.initialize_logged_model(name="model", source_run_id=run.info.run_id)
        mlflow.finalize_logged_model(model.model_id, "READY")
    return store.get_run(run.info.run_id)


def champion_and_challenger(store, challenger_only, champion_only, both_right=70):
    """Two classifiers' runs on the same 100 test examples (labels 0-9) with exactly these counts:
    examples only the challenger gets right, only the champion, both; the rest neither."""
    truth = np.arange(TEST_EXAMPLES) % 10
    wrong = (truth + 1) % 10
    blocks = [(challenger_only, True, False), (champion_only, False, True), (both_right, True, True)]
    rest = TEST_EXAMPLES - sum(count for count, _, _ in blocks)
    blocks.append((rest, False, False))
    right = {side: np.concatenate([np.full(count, ok[side]) for count, *ok in blocks]) for side in (0, 1)}
    challenger, champion = (np.where(right[side], truth, wrong) for side in (0, 1))
    champion_run = scored_run(store, champion, truth)
    challenger_run = scored_run(store, challenger, truth)
    return champion_run, challenger_run


@pytest.mark.parametrize(
    ("challenger_only", "champion_only", "settings", "promoted", "why"),
    [
        (12, 1, [], True, "a significant win (p < alpha 0.05)"),  # p = 0.0034
        (5, 2, [], False, "a win inside the noise"),  # p = 0.45: +3 points, but chance
        (5, 2, ["--gate", "margin"], True, None),  # the margin gate: any win above the margin
        (1, 10, [], False, "not a win"),  # p = 0.012, but the champion's way
        (12, 1, ["--alpha", "0.001"], False, "a win inside the noise"),
        (12, 1, ["--margin", "0.2"], False, "significant, but not above the margin 0.2"),
        (12, 1, ["--gate", "margin", "--margin", "0.2"], False, None),
    ],
)
def test_the_paired_gate_moves_the_champion_only_on_a_significant_win(
    store, capsys, challenger_only, champion_only, settings, promoted, why
):
    champion, challenger = champion_and_challenger(store, challenger_only, champion_only)
    assert promote("--run_id", champion.info.run_id) == 0
    capsys.readouterr()
    assert promote("--run_id", challenger.info.run_id, *settings) == 0
    out = capsys.readouterr().out
    assert alias_version(store, "champion") == ("2" if promoted else "1")
    version = store.get_model_version(MODEL, "2")
    (promote_run,) = [r for r in promotions(store) if r.data.tags["model_version"] == "2"]
    tags = promote_run.data.tags  # the whole evidence; the version keeps the few tags a search needs
    assert version.tags["decision"] == tags["promotion.decision"] == ("champion" if promoted else "challenger")
    reason = tags["promotion.reason"]
    assert reason.startswith("promoted: " if promoted else "kept the champion: ") and reason in out
    assert "(95% interval " in reason and "against champion version 1's" in reason
    assert reason.partition(": ")[2] in version.description and version.tags["compared_with"] == "1"
    assert tags["promotion.challenger_interval"] == version.tags["interval"].replace("-", " to ")
    assert tags["promotion.champion_interval"]
    if "margin" in settings[:2]:  # gate=margin: no paired test
        assert tags["promotion.gate"] == "margin" and "promotion.test" not in tags and "McNemar" not in reason
        assert "p_value" not in version.tags
        return
    assert why in reason and tags["promotion.gate"] == "paired"
    from pipelines.significance import mcnemar

    assert tags["promotion.test"] == "mcnemar" and tags["promotion.test_examples"] == str(TEST_EXAMPLES)
    assert tags["promotion.challenger_only_right"] == str(challenger_only)
    assert tags["promotion.champion_only_right"] == str(champion_only)
    assert float(tags["promotion.p_value"]) == pytest.approx(mcnemar(challenger_only, champion_only), rel=1e-5)
    assert f"{challenger_only} only the challenger gets right, {champion_only} only the champion" in reason
    assert version.tags["p_value"] == tags["promotion.p_value"]
    assert promote_run.data.params["gate"] == "paired"


def test_the_paired_gate_on_a_regression_uses_a_paired_bootstrap(store):
    truth = np.linspace(1, 2, 200)
    noise, other_noise = np.random.default_rng(0).normal(size=(2, 200))
    champion = scored_run(store, truth + 0.3 * other_noise, truth, entry_point="linear")
    close = scored_run(store, truth + 0.3 * noise, truth, entry_point="linear")  # a reseeded twin: p = 0.38
    better = scored_run(store, truth + 0.1 * noise, truth, entry_point="linear")
    assert close.data.metrics["test_mse"] < champion.data.metrics["test_mse"]  # a win, by chance
    for run in (champion, close, better):
        assert main(["promote", "--task", "linear", "--run_id", run.info.run_id]) == 0
    first, second, third = versions(store, "linear")
    assert first.tags["decision"] == "champion"
    assert second.tags["decision"] == "challenger" and "inside the noise" in second.description
    assert third.tags["decision"] == "champion" and alias_version(store, "champion", "linear") == "3"
    assert float(third.tags["p_value"]) < 0.01 and "MSE lower by" in third.description
    (evidence,) = [r.data.tags for r in promotions(store) if r.data.tags["model_version"] == "3"]
    assert evidence["promotion.test"] == "paired_bootstrap"
    low, high = (float(end) for end in evidence["promotion.gain_interval"].split(" to "))
    assert 0 < low < float(evidence["promotion.gain"]) < high


def test_runs_on_other_test_splits_are_refused_when_the_champion_cannot_be_evaluated_again(store, capsys, tmp_path):
    truth = np.arange(TEST_EXAMPLES) % 10
    champion = scored_run(store, truth, truth)
    params = {"seed": 42, "split_seed": 42, "data": str(tmp_path / "gone.npz")}  # its data is gone
    challenger = scored_run(store, truth, truth, test_inputs=np.arange(TEST_EXAMPLES) + 1, params=params)
    assert promote("--run_id", champion.info.run_id) == 0
    capsys.readouterr()
    assert promote("--run_id", challenger.info.run_id) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: run_id: cannot pair run {challenger.info.run_id}"), err
    assert "tested on other data" in err[0]
    assert numbers(versions(store)) == ["1"]  # nothing registered
    assert len(promotions(store)) == 1  # and no promote run started


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--alpha", "0"], "error: alpha: 0.0 is out of range; it must be a number in (0, 1)"),
        (["--alpha", "1.5"], "error: alpha: 1.5 is out of range"),
        (["--gate", "bayes"], "error: gate: bayes is out of range; it must be one of paired, margin"),
    ],
)
def test_bad_gate_settings_are_one_error_line(argv, message, store, capsys):
    assert main(["promote", "--task", MODEL, *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message), err
    assert not store.search_registered_models()


def test_compare_pairs_the_versions_that_share_a_test_split(store):
    from pipelines import compare

    champion, challenger = champion_and_challenger(store, 12, 1)  # a significant win
    twin = scored_run(store, *champion_and_challenger_predictions(5, 2))  # a win inside the noise
    elsewhere = scored_run(store, np.arange(10), np.arange(10), test_inputs=np.arange(10) + 1)  # another split
    for run in (champion, challenger, twin):
        assert promote("--run_id", run.info.run_id, "--gate", "margin") == 0
    query = f"source_run_id = '{elsewhere.info.run_id}'"
    (model,) = mlflow.search_logged_models(filter_string=query, output_format="list")
    mlflow.register_model(f"models:/{model.model_id}", MODEL)  # registered as is: promote would evaluate it again
    found = versions(store)
    labels = [f"v{v.version}" for v in found]
    matrix = compare.pairwise_tests(store, found, labels)
    assert list(matrix.index) == list(matrix.columns) == labels
    assert matrix.loc["v2", "v1"].startswith("better (p = 0.0034") and matrix.loc["v1", "v2"].startswith("worse")
    assert matrix.loc["v3", "v1"].startswith("no significant difference")
    assert matrix.loc["v4", "v1"] == matrix.loc["v1", "v4"] == "other test split" and matrix.loc["v1", "v1"] == "-"

    table = pd.DataFrame([{**r.data.metrics} for r in (champion, challenger)])
    assert compare._interval_columns(challenger.data.metrics)["test_accuracy 95%"] == "{:.4f} to {:.4f}".format(
        challenger.data.metrics["test_accuracy_ci_low"], challenger.data.metrics["test_accuracy_ci_high"]
    )
    figure = compare.intervals_figure(table, ["v1", "v2"])
    (axis,) = figure.axes
    assert [tick.get_text() for tick in axis.get_yticklabels()] == ["v1", "v2"] and len(axis.containers) == 2
    page = compare.render_html("t", table, {}, matrix)
    assert "paired tests" in page and "better (p = 0.0034" in page


def champion_and_challenger_predictions(challenger_only, champion_only, both_right=70):
    """(predicted, truth) of a challenger with these counts against `champion_and_challenger`'s champion."""
    truth = np.arange(TEST_EXAMPLES) % 10
    rest = TEST_EXAMPLES - challenger_only - champion_only - both_right
    right = np.concatenate([np.full(challenger_only, True), np.full(champion_only, False), np.full(both_right, True)])
    return np.where(np.concatenate([right, np.full(rest, False)]), truth, (truth + 1) % 10), truth
