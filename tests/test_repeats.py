"""Seed repeats (`train --repeats N`): nested runs under a parent that summarizes them, and
promote and compare taking the parent for its median seed."""

import mlflow
import numpy as np
import pytest

from pipelines.cli import main
from tests.helpers import mlflow_run, runs

REPEATS = 3
ENTRY_POINT = "churn"


def test_repeats_train_nested_seeds_under_a_parent_that_summarizes_them(store, tiny, tmp_path, capsys):
    assert main(["train", *tiny.argv(ENTRY_POINT, epochs=2, seed=5), "--repeats", str(REPEATS)]) == 0
    found = runs(store)
    (parent,) = [r for r in found if "mlflow.parentRunId" not in r.data.tags]
    children = sorted((r for r in found if r is not parent), key=lambda r: int(r.data.params["seed"]))
    assert [r.data.params["seed"] for r in children] == ["5", "6", "7"]
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    assert {r.info.status for r in found} == {"FINISHED"}
    assert "entry_point" not in parent.data.tags  # never taken for a training run of its own
    assert parent.data.params["repeats"] == str(REPEATS) and parent.data.tags["repeat.count"] == str(REPEATS)

    # The parent's statistics are its children's.
    for metric in ("test_accuracy", "test_loss", "test_roc_auc", "test_accuracy_ci_low"):
        values = np.array([r.data.metrics[metric] for r in children])
        summary = parent.data.metrics
        assert summary[f"{metric}_mean"] == pytest.approx(values.mean(), abs=1e-9)
        assert summary[f"{metric}_std"] == pytest.approx(values.std(), abs=1e-9)
        assert (summary[f"{metric}_min"], summary[f"{metric}_max"]) == (values.min(), values.max())
    # The children share one test split, whatever their seed.
    inputs = [i.dataset for r in children for i in r.inputs.dataset_inputs]
    test_digests = {dataset.digest for dataset in inputs if dataset.name.endswith("-test")}
    assert len(test_digests) == 1

    # The median seed: its accuracy is the middle one of the three.
    median = store.get_run(parent.data.tags["repeat.median_run_id"])
    accuracies = sorted(r.data.metrics["test_accuracy"] for r in children)
    assert median.data.metrics["test_accuracy"] == accuracies[1]
    assert parent.data.tags["repeat.median_seed"] == median.data.params["seed"]
    assert "figures/learning_curves.png" in {a.path for a in store.list_artifacts(parent.info.run_id, "figures")}
    assert "± " in parent.data.tags["mlflow.note.content"]

    # promote takes the parent for its median seed; compare shows the group's mean and std.
    assert main(["promote", "--task", ENTRY_POINT, "--run_id", parent.info.run_id]) == 0
    version = store.get_model_version_by_alias(ENTRY_POINT, "champion")
    assert version.run_id == median.info.run_id
    capsys.readouterr()
    assert main(["compare", "--model", ENTRY_POINT, "--output", str(tmp_path / "report.html")]) == 0
    out = capsys.readouterr().out
    mean, std = (parent.data.metrics[f"test_accuracy_{s}"] for s in ("mean", "std"))
    assert f"{mean:.4f} ± {std:.4f} (3 seeds)" in out
    assert f"{mean:.4f} ± {std:.4f} (3 seeds)" in (tmp_path / "report.html").read_text()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--repeats", "0"], "error: repeats: 0 is out of range; it must be an integer in [1, 1000]"),
        (["--repeats", "two"], "error: repeats: 'two' is not an integer"),
        (["--repeats", "2", "--resume", "abc123"], "error: repeats: resume continues one run"),
    ],
)
def test_bad_repeats_are_one_error_line_and_start_no_run(argv, message, store, tiny, capsys):
    assert main(["train", *tiny.argv(ENTRY_POINT), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message), err
    assert runs(store) == [] and mlflow.active_run() is None


def test_a_dry_run_lists_the_seeds_repeats_would_train(store, capsys):
    import yaml

    assert main(["train", "--task", ENTRY_POINT, "--seed", "5", "--repeats", "3", "--dry_run"]) == 0
    plan = yaml.safe_load(capsys.readouterr().out)
    assert plan["repeats"] == [5, 6, 7] and plan["params"]["seed"] == 5
    assert runs(store) == []


@pytest.mark.slow
def test_mlflow_run_repeats_under_the_run_it_created(store, tiny):
    completed = mlflow_run(ENTRY_POINT, **tiny.overrides(ENTRY_POINT), repeats=2)
    assert completed.returncode == 0, completed.stderr[-3000:]
    found = runs(store)
    (parent,) = [r for r in found if r.data.tags.get("mlflow.project.entryPoint") == ENTRY_POINT]
    children = [r for r in found if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(found) == 3 and len(children) == 2 and {r.info.status for r in found} == {"FINISHED"}
    assert parent.data.tags["repeat.median_run_id"] in {r.info.run_id for r in children}
    values = [r.data.metrics["test_accuracy"] for r in children]
    assert parent.data.metrics["test_accuracy_mean"] == pytest.approx(np.mean(values), abs=1e-9)
