"""Fixtures: a private MLflow store per test, and tiny datasets in the real file formats."""

import io
import tarfile

import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from experiments.emotion import EMOTIONS


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fresh SQLite tracking store with an experiment whose artifacts stay in tmp_path.

    The URI and experiment are exported, so subprocesses (`mlflow run`, the CLI) use them too.
    """
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    experiment_id = mlflow.create_experiment("tests", artifact_location=str(tmp_path / "artifacts"))
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", experiment_id)  # set_experiment exports it too
    mlflow.set_experiment(experiment_id=experiment_id)
    yield mlflow.MlflowClient(uri)
    mlflow.set_tracking_uri(None)


# Tiny data in the real formats. Each class gets a bright block in its own place,
# so even a few examples are learnable.


def _class_images(labels, size, rng):
    images = rng.integers(0, 40, size=(len(labels), size, size), dtype=np.uint8)
    block = size // 4
    for image, label in zip(images, labels):
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
    rng = np.random.default_rng(0)
    rows = 200
    age = rng.integers(18, 80, rows)
    frame = pd.DataFrame(
        {
            "RowNumber": np.arange(1, rows + 1),
            "CustomerId": rng.integers(15_000_000, 16_000_000, rows),
            "Surname": rng.choice(["Hargrave", "Hill", "Onio", "Boni"], rows),
            "CreditScore": rng.integers(350, 850, rows),
            "Geography": rng.choice(["France", "Spain", "Germany"], rows),
            "Gender": rng.choice(["Female", "Male"], rows),
            "Age": age,
            "Tenure": rng.integers(0, 11, rows),
            "Balance": rng.uniform(0, 250_000, rows).round(2),
            "NumOfProducts": rng.integers(1, 5, rows),
            "HasCrCard": rng.integers(0, 2, rows),
            "IsActiveMember": rng.integers(0, 2, rows),
            "EstimatedSalary": rng.uniform(10, 200_000, rows).round(2),
            "Exited": (age > 50).astype(int),
        }
    )
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


POSTGRES_SERVER = "postgresql://postgres@127.0.0.1:5432"


@pytest.fixture
def postgres_url():
    """A fresh, empty PostgreSQL database on the local server, dropped afterwards."""
    import uuid

    import sqlalchemy

    name = f"sweep_test_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(f"{POSTGRES_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    yield f"{POSTGRES_SERVER}/{name}"
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f"DROP DATABASE {name} WITH (FORCE)"))
    admin.dispose()
