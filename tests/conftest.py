"""Fixtures: a private MLflow store per test, tiny datasets in the real file formats, the
real recipes shrunk to a few seconds, and the tiers' rules (in-process unless `slow`;
services present or skipped, never skipped under CI)."""

import functools
import io
import os
import shutil
import socket
import sqlite3
import subprocess
import tarfile
import uuid
from pathlib import Path

import hypothesis
import mlflow
import numpy as np
import pandas as pd
import pytest
import sqlalchemy
from PIL import Image

from experiments import resolve
from experiments.emotion import EMOTIONS
from pipelines.params import declared_params, parse_params
from tests.helpers import churn_frame, options

POSTGRES_SERVER = "postgresql://postgres@127.0.0.1:5432"
ON_CI = os.environ.get("CI", "").lower() in ("true", "1")
# No per-example deadline: wall-clock time on a loaded 2-core machine says nothing of the code.
hypothesis.settings.register_profile("default", deadline=None)
# HYPOTHESIS_PROFILE=fuzz: many more examples of the bad-input fuzzing (tests/test_bad_input.py).
hypothesis.settings.register_profile("fuzz", deadline=None, max_examples=200)
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
# The tests' `mlflow server`s start no GenAI job runner: it would add some eight processes,
# each importing MLflow, to every server (docker/compose.yaml sets the same).
os.environ["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"


# --- tiers ---------------------------------------------------------------------------------------


@functools.cache
def _postgres_reason():
    """Why the PostgreSQL tests cannot run here, or None when they can."""
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=2):
            pass
    except OSError as error:
        return f"needs PostgreSQL at 127.0.0.1:5432 ({error.strerror or error})"
    return None


@functools.cache
def _browser_reason():
    return None if shutil.which("chromium") else "needs the `chromium` binary (Debian package `chromium`)"


SERVICES = {"postgres": _postgres_reason, "browser": _browser_reason}
ON_DEMAND = ("real_data", "crash")  # markers whose tests run only when -m names them


def pytest_collection_modifyitems(config, items):
    """The real-data checks and the full crash sweep run only when asked for (-m real_data,
    -m crash), whatever else -m selects.

    The `slow` tests go first: each worker starts on its share of this order and takes tests
    from the end of the busiest one's when it runs dry (`--dist=worksteal`), so the many short
    in-process tests come last and even out the workers' ends.
    """
    for on_demand in ON_DEMAND:
        if on_demand in (config.getoption("markexpr") or ""):
            continue
        deselected = [item for item in items if item.get_closest_marker(on_demand)]
        if deselected:
            config.hook.pytest_deselected(items=deselected)
            items[:] = [item for item in items if not item.get_closest_marker(on_demand)]
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: files keep their order


def pytest_runtest_setup(item):
    """A test whose service is missing skips with the reason; under CI (CI=true) it fails instead."""
    for marker, reason_missing in SERVICES.items():
        reason = reason_missing() if item.get_closest_marker(marker) else None
        if reason and ON_CI:
            pytest.fail(f"{reason}; CI must provide it (.ci/run does), so it may not skip", pytrace=False)
        if reason:
            pytest.skip(reason)


ALLOWED_IN_PROCESS = {"git"}  # MLflow reads the commit through GitPython


@pytest.fixture(autouse=True)
def in_process_unless_slow(request, monkeypatch):
    """The fast tier (-m 'not slow') runs in this process: a test that starts a process must be marked slow."""
    if request.node.get_closest_marker("slow"):
        return
    start = subprocess.Popen.__init__

    def refuse(self, args, *more, **options):
        words = [args] if isinstance(args, (str, os.PathLike)) else list(args)
        program = Path(str(words[0]).split()[0]).name
        if program not in ALLOWED_IN_PROCESS:
            raise AssertionError(f"{request.node.nodeid} starts {program}: mark it slow")
        start(self, args, *more, **options)

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)


# --- the tracking store --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def migrated_store(tmp_path_factory):
    """An empty SQLite tracking store with MLflow's schema, migrated once for the whole run."""
    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{path}").search_experiments()  # creates and migrates the schema
    return path


@pytest.fixture
def store(tmp_path, monkeypatch, migrated_store):
    """A fresh SQLite tracking store with an experiment `tests` whose artifacts stay in tmp_path."""
    yield open_store(tmp_path, migrated_store, monkeypatch)
    mlflow.set_tracking_uri(None)


def open_store(folder, migrated_store, monkeypatch):
    """A copy of the migrated store in `folder` with an experiment `tests`, as this process's
    tracking store. The URI and experiment are exported, so subprocesses (`mlflow run`, the CLI)
    use them too."""
    shutil.copy(migrated_store, folder / "mlflow.db")
    uri = f"sqlite:///{folder}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    # Experiments that commands create themselves (`promotions`, `comparisons`) keep their
    # artifacts in the test's folder, not in the checkout's ./mlruns: MLflow's SQLite store
    # takes its default artifact root from this variable (a server's, set by `mlflow server`).
    monkeypatch.setenv("_MLFLOW_SERVER_ARTIFACT_ROOT", str(folder / "mlruns"))
    mlflow.set_tracking_uri(uri)
    experiment_id = mlflow.create_experiment("tests", artifact_location=str(folder / "artifacts"))
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", experiment_id)  # set_experiment exports it too
    mlflow.set_experiment(experiment_id=experiment_id)
    return mlflow.MlflowClient(uri)


def restore_store(snapshot, client):
    """Make the store of `client` a copy of the `snapshot` database (made by `open_store`),
    through SQLite's backup API: safe while MLflow holds connections to it."""
    with sqlite3.connect(snapshot) as source, sqlite3.connect(client.tracking_uri.removeprefix("sqlite:///")) as target:
        source.backup(target)


# --- tiny data in the real formats ---------------------------------------------------------------
# Each class gets a bright block in its own place, so even a few examples are learnable.


def _class_images(labels, size, rng):
    images = rng.integers(0, 40, size=(len(labels), size, size), dtype=np.uint8)
    block = size // 4
    for image, label in zip(images, labels, strict=True):
        row, col = divmod(int(label) % 9, 3)
        image[row * block : (row + 2) * block, col * block : (col + 2) * block] = 230
    return images


@pytest.fixture
def mnist_npz(tmp_path):
    return write_mnist_npz(tmp_path / "mnist.npz")


def write_mnist_npz(path):
    """120 train and 40 test images in Keras' mnist.npz layout."""
    rng = np.random.default_rng(0)
    y_train, y_test = np.arange(120) % 10, np.arange(40) % 10
    np.savez(
        path,
        x_train=_class_images(y_train, 28, rng),
        y_train=y_train.astype("uint8"),
        x_test=_class_images(y_test, 28, rng),
        y_test=y_test.astype("uint8"),
    )
    return path


@pytest.fixture
def churn_csv(tmp_path):
    frame = churn_frame(200, np.random.default_rng(0))
    path = tmp_path / "Churn_Modelling.csv"
    frame.to_csv(path, index=False)
    return path


def _jpeg(image):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG")
    return buffer.getvalue()


FER_FILES_PER_CLASS = {"train": 6, "PublicTest": 2, "PrivateTest": 2}


@pytest.fixture
def fer_folder(tmp_path):
    """The Kaggle image-folder layout: train/<emotion>/ and test/<emotion>/{Public,Private}Test_*."""
    rng = np.random.default_rng(0)
    root = tmp_path / "fer2013"
    for label, emotion in enumerate(EMOTIONS):
        for split, count in FER_FILES_PER_CLASS.items():
            folder = root / ("train" if split == "train" else "test") / emotion
            folder.mkdir(parents=True, exist_ok=True)
            prefix = "Training" if split == "train" else split
            for index, image in enumerate(_class_images([label] * count, 48, rng)):
                (folder / f"{prefix}_{label}{index}.jpg").write_bytes(_jpeg(image))
    return root


@pytest.fixture
def fer_tarball(fer_folder, tmp_path):
    path = tmp_path / "fer2013.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        for folder in ("train", "test"):
            archive.add(fer_folder / folder, arcname=folder)
    return path


@pytest.fixture
def fer_csv(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for usage, count in (("Training", 6), ("PublicTest", 2), ("PrivateTest", 2)):
        for label in range(len(EMOTIONS)):
            for image in _class_images([label] * count, 48, rng):
                rows.append({"emotion": label, "pixels": " ".join(map(str, image.ravel())), "Usage": usage})
    path = tmp_path / "fer2013.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


# --- the real recipes, shrunk --------------------------------------------------------------------

TINY_TRAINING = {"epochs": 1, "batch_size": 16}
TINY_KNOBS = {"filters": 8, "units": 16}  # at most this wide, where the variant has the knob


class TinyRecipe:
    """An entry point's own recipe shrunk to seconds: one epoch of small batches, narrow
    layers, and the tiny data file of its task. Every value is given as text, as the
    command line and MLproject give them; `changes` set any parameter."""

    def __init__(self, data_files):
        self.data_files = data_files

    def overrides(self, entry_point, **changes):
        task, variant = resolve(entry_point)
        declared = declared_params(task, variant)
        values = dict(TINY_TRAINING)
        values |= {name: min(width, declared[name].default) for name, width in TINY_KNOBS.items() if name in declared}
        if "data" in declared:
            values["data"] = self.data_files[task.name]
        return {name: str(value) for name, value in {**values, **changes}.items()}

    def params(self, entry_point, **changes):
        """(task, variant, parsed params) for `pipelines.train.train`."""
        task, variant = resolve(entry_point)
        return task, variant, parse_params(task, variant, self.overrides(entry_point, **changes))

    def argv(self, entry_point, **changes):
        """`--task <entry point> --name value ...` for `python -m pipelines train|sweep`."""
        return ["--task", entry_point, *options(**self.overrides(entry_point, **changes))]


@pytest.fixture
def tiny(mnist_npz, churn_csv, fer_folder):
    return TinyRecipe({"mnist": mnist_npz, "churn": churn_csv, "emotion": fer_folder})


# --- PostgreSQL ----------------------------------------------------------------------------------


@pytest.fixture
def postgres_url():
    """A fresh, empty PostgreSQL database on the local server, dropped afterwards."""
    name = f"sweep_test_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(f"{POSTGRES_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    yield f"{POSTGRES_SERVER}/{name}"
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f"DROP DATABASE {name} WITH (FORCE)"))
    admin.dispose()
