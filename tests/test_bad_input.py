"""The bad-input contract, fuzzed with Hypothesis: every malformed file in the formats the
tasks read, and every parameter value, gets either a clean refusal or a correct read.

A clean refusal: exit code 2, exactly one `error:` line naming the parameter or file, no
traceback, and no change to the store (no run, no experiment). A correct read: the run
FINISHED, and the loader gave exactly the data the file holds.

Each strategy draws a valid tiny file and the ways to spoil it; each way is known to be
readable or not, so the test knows which answer is right. CI runs a few examples of each;
`HYPOTHESIS_PROFILE=fuzz python -m pytest -m fuzz` runs many more.
"""

import contextlib
import io
import os
import tarfile
import uuid
import zipfile

import hypothesis
import numpy as np
import optuna
import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, given
from hypothesis import strategies as st
from PIL import Image

from experiments import entry_points, resolve
from experiments.churn import load_churn
from experiments.emotion import EMOTIONS, load_fer2013
from experiments.mnist import load_mnist
from pipelines.cli import main
from pipelines.params import declared_params
from pipelines.sweeps.storage import open_storage
from tests.helpers import churn_frame

pytestmark = pytest.mark.fuzz
EXAMPLES = hypothesis.settings.get_profile("fuzz").max_examples if os.environ.get("HYPOTHESIS_PROFILE") == "fuzz" else 8
FUZZED = hypothesis.settings(
    max_examples=EXAMPLES,
    # One store per test serves every example: each checks what its own command changed.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
QUICK_TRAINING = ["--epochs", "1", "--batch_size", "16", "--system_metrics_interval", "0"]


def answer(argv):
    """(exit code, stderr) of the command, run in this process."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    return code, stderr.getvalue()


def check_answer(store, argv, readable, names):
    """Run the command; a readable input must train, any other must be refused cleanly,
    with an error line that contains one of `names` (the file, the parameters)."""
    # A refused input must not even create the experiment it names. (An accepted one trains
    # in the store's own experiment, whose artifacts stay in the test's folder.)
    experiment = f"fuzz-{uuid.uuid4().hex[:8]}"
    before = {run.info.run_id for run in all_runs(store)}
    code, stderr = answer(argv if readable else [*argv, "--experiment", experiment])
    new_runs = [run for run in all_runs(store) if run.info.run_id not in before]
    assert "Traceback" not in stderr, stderr[-3000:]
    if readable:
        assert code == 0, stderr[-3000:]
        assert [run.info.status for run in new_runs] == ["FINISHED"]
        return
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1, stderr[-3000:]
    assert any(name in errors[0] for name in names), errors[0]
    assert not new_runs and store.get_experiment_by_name(experiment) is None


def all_runs(store):
    return store.search_runs([e.experiment_id for e in store.search_experiments()])


# --- MNIST's npz -------------------------------------------------------------------------------

# How a split's images are stored: each readable one holds the same pixels.
PIXEL_ENCODINGS = {
    "uint8": (True, lambda pixels: pixels),
    "int16": (True, lambda pixels: pixels.astype("int16")),
    "float 0-255": (True, lambda pixels: pixels.astype("float32")),
    "float 0-1": (True, lambda pixels: pixels / 255),
    "float with NaN": (False, lambda pixels: np.where(pixels == pixels.max(), np.nan, pixels / 255)),
    "float with inf": (False, lambda pixels: np.where(pixels == pixels.max(), np.inf, pixels.astype("float64"))),
    "above 255": (False, lambda pixels: pixels.astype("int16") + 100),
    "negative": (False, lambda pixels: pixels.astype("int16") - 128),
    "bool": (False, lambda pixels: pixels > 127),
    "text": (False, lambda pixels: pixels.astype(str)),
}
LABEL_ENCODINGS = {
    "int": (True, lambda labels: labels),
    "uint8": (True, lambda labels: labels.astype("uint8")),
    "float": (True, lambda labels: labels.astype("float32")),
    "column": (True, lambda labels: labels.reshape(-1, 1)),
    "out of range": (False, lambda labels: labels + 10),
    "NaN": (False, lambda labels: np.where(labels == 0, np.nan, labels)),
    "one short": (False, lambda labels: labels[:-1]),
}
SHAPES = {"(n, 28, 28)": True, "(n, 28, 28, 1)": False, "(n, 784)": False, "(n, 27, 28)": False}
FILE_DAMAGE = ("none", "truncated", "not a zip", "empty file")


@st.composite
def mnist_npz(draw):
    """(arrays to save, damage to the file, readable?, the pixels a correct read gives)."""
    train_size = draw(st.sampled_from([0, 1, 2, 30]))  # 30 trains; fewer cannot
    test_size = draw(st.sampled_from([0, 1, 10]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    pixels = {"train": rng.integers(0, 256, (train_size, 28, 28), "uint8")}
    pixels["test"] = rng.integers(0, 256, (test_size, 28, 28), "uint8")
    readable = train_size == 30 and test_size > 0
    arrays = {}
    for split in ("train", "test"):
        encoding = draw(st.sampled_from(sorted(PIXEL_ENCODINGS)))
        shape = draw(st.sampled_from(sorted(SHAPES)))
        labels = draw(st.sampled_from(sorted(LABEL_ENCODINGS)))
        ok, encode = PIXEL_ENCODINGS[encoding]
        images = encode(pixels[split]) if pixels[split].size else pixels[split]  # an empty split is refused
        if shape == "(n, 28, 28, 1)":
            images = images[..., np.newaxis]
        elif shape == "(n, 784)":
            images = images.reshape(len(images), 28 * 28)
        elif shape == "(n, 27, 28)":
            images = images[:, 1:]
        label_ok, encode_labels = LABEL_ENCODINGS[labels]
        arrays[f"x_{split}"] = images
        arrays[f"y_{split}"] = encode_labels(np.arange(len(images)) % 10)
        readable = readable and ok and SHAPES[shape] and label_ok
    dropped = draw(st.sampled_from([None, None, "x_train", "y_test"]))
    if dropped:
        arrays = {("images" if key == dropped else key): value for key, value in arrays.items()}
    damage = draw(st.sampled_from(FILE_DAMAGE))
    return arrays, damage, readable and not dropped and damage == "none", pixels


def save_npz(path, arrays, damage):
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    data = buffer.getvalue()
    data = {"none": data, "truncated": data[: len(data) // 2], "not a zip": b"\x00" * 64, "empty file": b""}[damage]
    path.write_bytes(data)


@FUZZED
@given(npz=mnist_npz())
def test_any_mnist_npz_is_refused_cleanly_or_read_exactly(npz, store, tmp_path):
    arrays, damage, readable, pixels = npz
    path = tmp_path / f"mnist-{uuid.uuid4().hex[:8]}.npz"
    save_npz(path, arrays, damage)
    argv = ["train", "--task", "mnist_mlp", "--data", str(path), "--units", "8", *QUICK_TRAINING]
    check_answer(store, argv, readable, names=[str(path), "max_samples, validation_fraction"])
    if readable:
        splits = load_mnist(path, 0)
        assert np.array_equal(splits.x_train[..., 0], pixels["train"])
        assert np.array_equal(splits.x_test[..., 0], pixels["test"])
        assert np.array_equal(splits.y_train, np.arange(len(pixels["train"])) % 10)


def test_the_npz_encodings_fuzzed_are_told_apart_by_the_loader(tmp_path):
    """Each spoiled encoding alone is refused; each readable one gives the same pixels."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (30, 28, 28), "uint8")
    labels = np.arange(30) % 10
    for name, (readable, encode) in PIXEL_ENCODINGS.items():
        path = tmp_path / f"{name}.npz"
        np.savez(path, x_train=encode(pixels), y_train=labels, x_test=encode(pixels[:5]), y_test=labels[:5])
        if readable:
            assert np.array_equal(load_mnist(path, 0).x_train[..., 0], pixels), name
        else:
            with pytest.raises(Exception, match=str(path)) as refused:
                load_mnist(path, 0)
            assert type(refused.value).__name__ == "InputError", name


# --- churn's CSV -------------------------------------------------------------------------------

CHURN_COLUMNS = ["RowNumber", "CustomerId", "Surname", "CreditScore", "Geography", "Gender", "Age", "Tenure"]
CHURN_COLUMNS += ["Balance", "NumOfProducts", "HasCrCard", "IsActiveMember", "EstimatedSalary", "Exited"]
USED_COLUMNS = CHURN_COLUMNS[3:]
NUMERIC_COLUMNS = [c for c in USED_COLUMNS if c not in ("Geography", "Gender")]


@st.composite
def churn_csv(draw):
    """(file bytes, readable?, rows, Exited values a correct read gives)."""
    rows = draw(st.sampled_from([0, 1, 3, 40]))
    frame = churn_frame(rows, np.random.default_rng(draw(st.integers(0, 2**16))), exited=np.arange(rows) % 2)
    readable = rows == 40
    row = draw(st.integers(0, max(rows - 1, 0)))
    change = draw(
        st.sampled_from(
            [
                "none",
                "drop column",
                "rename column",
                "empty cell",
                "empty unused cell",
                "inf",
                "text in a number",
                "new country",
                "Exited 2",
                "one class",
                "semicolons",
                "empty file",
                "binary",
            ]
        )
    )
    column = draw(st.sampled_from(USED_COLUMNS))
    numeric = draw(st.sampled_from(NUMERIC_COLUMNS))
    separator = ","
    if change == "drop column":
        frame, readable = frame.drop(columns=column), False
    elif change == "rename column":
        frame, readable = frame.rename(columns={column: column.lower()}), False
    elif change == "empty cell" and rows:
        frame[column] = frame[column].astype(object)
        frame.loc[row, column], readable = None, False
    elif change == "empty unused cell" and rows:
        frame.loc[row, "Surname"] = None  # an identifier, never read
    elif change == "inf" and rows:
        frame[numeric] = frame[numeric].astype(float)
        frame.loc[row, numeric], readable = np.inf, False
    elif change == "text in a number" and rows:
        frame[numeric] = frame[numeric].astype(object)
        frame.loc[row, numeric], readable = "n/a\nsee notes", False
    elif change == "new country" and rows:
        frame.loc[row, "Geography"] = "Italy"
    elif change == "Exited 2" and rows:
        frame.loc[row, "Exited"], readable = 2, False
    elif change == "one class":
        frame["Exited"], readable = 0, False
    elif change == "semicolons":
        separator, readable = ";", False
    data = frame.to_csv(index=False, sep=separator).encode()
    if change == "empty file":
        data, readable = b"", False
    elif change == "binary":
        data, readable = bytes(range(256)) * 4, False
    return data, readable, rows, sorted(frame["Exited"]) if "Exited" in frame else None


@FUZZED
@given(csv=churn_csv())
def test_any_churn_csv_is_refused_cleanly_or_read_exactly(csv, store, tmp_path):
    data, readable, rows, exited = csv
    path = tmp_path / f"churn-{uuid.uuid4().hex[:8]}.csv"
    path.write_bytes(data)
    argv = ["train", "--task", "churn", "--data", str(path), *QUICK_TRAINING]
    check_answer(store, argv, readable, names=[str(path)])
    if readable:
        splits = load_churn(path, 0)
        assert len(splits.x_train) + len(splits.x_test) == rows
        assert sorted(np.concatenate([splits.y_train, splits.y_test])) == exited
        assert np.isfinite(splits.x_train).all() and np.isfinite(splits.x_test).all()


# --- FER2013: image folders, archives and the CSV -------------------------------------------

FER_COUNTS = {"Training": 2, "PublicTest": 1, "PrivateTest": 1}  # images per class
# What spoils an image layout, and whether the data stays readable.
FER_FOLDER_CHANGES = {
    "none": True,
    "a class missing": True,  # warned of; the class has no recall
    "Thumbs.db": True,
    ".DS_Store": True,
    "__MACOSX": True,
    "desktop.ini": True,
    "64x64 image": True,  # resized to 48x48
    "colour image": True,  # read as grayscale
    "notes.txt in a class": False,
    "zero-byte jpg": False,
    "text named .jpg": False,
    "no test folder": False,
    "archive cut short": False,
}
FER_CSV_CHANGES = {
    "none": True,
    "leading spaces in the header": True,  # Kaggle's icml_face_data.csv
    "pixel not a number": False,
    "2303 pixels": False,
    "pixel 256": False,
    "usage Validation": False,
    "emotion 7": False,
    "no Usage column": False,
    "empty pixels": False,
}


def fer_images(rng):
    """[(split, emotion index, file name, 48x48 uint8 image)] of a tiny FER2013."""
    return [
        (usage, label, f"{usage}_{label}{index}.jpg", rng.integers(0, 256, (48, 48), "uint8"))
        for usage, count in FER_COUNTS.items()
        for label in range(len(EMOTIONS))
        for index in range(count)
    ]


@st.composite
def fer_layout(draw):
    """(files {relative path: bytes}, packaging, readable?, expected {split: labels})."""
    images = fer_images(np.random.default_rng(draw(st.integers(0, 2**16))))
    change = draw(st.sampled_from(sorted(FER_FOLDER_CHANGES)))
    packaging = draw(st.sampled_from(["folder", "zip", "tar.gz"]))
    if change == "archive cut short" and packaging == "folder":
        change = "none"
    files = {}
    for usage, label, name, image in images:
        if change == "a class missing" and label == 1:
            continue
        folder = "train" if usage == "Training" else "test"
        if change == "no test folder" and folder == "test":
            continue
        files[f"{folder}/{EMOTIONS[label]}/{name}"] = jpeg(image)
    first = f"train/{EMOTIONS[0]}"
    extra = {
        "Thumbs.db": {f"{first}/Thumbs.db": b"\xd0\xcf\x11\xe0 thumbnails"},
        ".DS_Store": {f"{first}/.DS_Store": b"\x00\x00\x00\x01Bud1"},
        "__MACOSX": {f"__MACOSX/{first}/._Training_00.jpg": b"\x00\x05\x16\x07 resource fork"},
        "desktop.ini": {f"{first}/desktop.ini": b"[.ShellClassInfo]"},
        "notes.txt in a class": {f"{first}/notes.txt": b"to do"},
        "zero-byte jpg": {f"{first}/Training_99.jpg": b""},
        "text named .jpg": {f"{first}/Training_99.jpg": b"not an image"},
    }.get(change, {})
    if change == "64x64 image":
        files[f"{first}/Training_00.jpg"] = jpeg(np.zeros((64, 64), "uint8"))
    if change == "colour image":
        files[f"{first}/Training_00.jpg"] = jpeg(np.zeros((48, 48, 3), "uint8"))
    files |= extra
    expected = {
        split: sorted(
            label
            for usage, label, _, _ in images
            if usage == usage_of and not (change == "a class missing" and label == 1)
        )
        for split, usage_of in (("train", "Training"), ("val", "PublicTest"), ("test", "PrivateTest"))
    }
    return files, packaging, change == "archive cut short", FER_FOLDER_CHANGES[change], expected


def jpeg(image):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG")
    return buffer.getvalue()


def write_fer(folder, files, packaging, cut_short):
    """The files as a folder, a .zip or a .tar.gz under `folder`; the data path."""
    if packaging == "folder":
        for name, data in files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)
        return folder
    path = folder.with_name(folder.name + (".zip" if packaging == "zip" else ".tar.gz"))
    if packaging == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            for name, data in files.items():
                archive.writestr(name, data)
    else:
        with tarfile.open(path, "w:gz") as archive:
            for name, data in files.items():
                member = tarfile.TarInfo(name)
                member.size = len(data)
                archive.addfile(member, io.BytesIO(data))
    if cut_short:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


@st.composite
def fer_csv(draw):
    """(CSV bytes, file name, readable?, expected {split: labels})."""
    images = fer_images(np.random.default_rng(draw(st.integers(0, 2**16))))
    frame = pd.DataFrame(
        {
            "emotion": [label for _, label, _, _ in images],
            "pixels": [" ".join(map(str, image.ravel())) for _, _, _, image in images],
            "Usage": [usage for usage, _, _, _ in images],
        }
    )
    change = draw(st.sampled_from(sorted(FER_CSV_CHANGES)))
    row = draw(st.integers(0, len(frame) - 1))
    if change == "pixel not a number":
        frame.loc[row, "pixels"] = frame.loc[row, "pixels"].replace(" ", " x ", 1)
    elif change == "2303 pixels":
        frame.loc[row, "pixels"] = frame.loc[row, "pixels"].rsplit(" ", 1)[0]
    elif change == "pixel 256":
        frame.loc[row, "pixels"] = "256 " + frame.loc[row, "pixels"].split(" ", 1)[1]
    elif change == "usage Validation":
        frame.loc[row, "Usage"] = "Validation"
    elif change == "emotion 7":
        frame.loc[row, "emotion"] = 7
    elif change == "no Usage column":
        frame = frame.drop(columns="Usage")
    elif change == "empty pixels":
        frame.loc[row, "pixels"] = ""
    elif change == "leading spaces in the header":
        frame.columns = ["emotion", " pixels", " Usage"]
    name = draw(st.sampled_from(["fer2013.csv", "icml_face_data.csv", "faces.CSV"]))
    expected = {
        split: sorted(label for usage, label, _, _ in images if usage == usage_of)
        for split, usage_of in (("train", "Training"), ("val", "PublicTest"), ("test", "PrivateTest"))
    }
    return frame.to_csv(index=False).encode(), name, FER_CSV_CHANGES[change], expected


def check_fer(store, path, readable, expected):
    argv = ["train", "--task", "emotion_cnn", "--data", str(path), "--filters", "4", "--units", "8", *QUICK_TRAINING]
    check_answer(store, argv, readable, names=[str(path)])
    if readable:
        splits = load_fer2013(path, 0)
        assert sorted(splits.y_train) == expected["train"]
        assert sorted(splits.y_val) == expected["val"] and sorted(splits.y_test) == expected["test"]
        assert splits.x_train.shape[1:] == (48, 48, 1) and splits.x_train.dtype == np.uint8


@FUZZED
@given(layout=fer_layout())
def test_any_fer_image_folder_or_archive_is_refused_cleanly_or_read_exactly(layout, store, tmp_path):
    files, packaging, cut_short, readable, expected = layout
    path = write_fer(tmp_path / f"fer-{uuid.uuid4().hex[:8]}", files, packaging, cut_short)
    check_fer(store, path, readable, expected)


@FUZZED
@given(csv=fer_csv())
def test_any_fer_csv_is_refused_cleanly_or_read_exactly(csv, store, tmp_path):
    data, name, readable, expected = csv
    folder = tmp_path / uuid.uuid4().hex[:8]
    folder.mkdir()
    (folder / name).write_bytes(data)
    check_fer(store, folder / name, readable, expected)


# --- parameter values --------------------------------------------------------------------------

ODD_VALUES = ["-1e-3", "-inf", "inf", "nan", "1e400", "0x10", " 5 ", "", "-", "--", "=", "1,5", "1_000", "٣", "\x00"]
VALUES = st.one_of(
    st.sampled_from(ODD_VALUES),
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=20),
    st.text(min_size=200, max_size=2000),
)
EVERY_PARAMETER = [(name, entry) for entry in sorted(entry_points()) for name in declared_params(*resolve(entry))]


@FUZZED
@given(case=st.sampled_from(EVERY_PARAMETER), value=VALUES)
def test_any_value_of_any_parameter_is_refused_in_one_line_or_taken_as_it_reads(case, value, store):
    name, entry = case
    output = io.StringIO()
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(output):
        code = main(["train", "--task", entry, f"--{name}={value}", "--dry_run"])
    assert "Traceback" not in stderr.getvalue()
    if code == 0:
        param = declared_params(*resolve(entry))[name]
        taken = yaml.safe_load(output.getvalue())["params"][name] if name != "data" else value
        assert isinstance(taken, param.type) and param.valid(taken)
        if param.type in (int, float):
            assert taken == float(value.strip())
        return
    (error,) = [line for line in stderr.getvalue().splitlines() if line.startswith("error:")]
    assert code == 2 and error.startswith(f"error: {name}: ")
    assert len(error) <= len(f"error: {name}: ") + 200  # a long value is echoed cut short


@FUZZED
@given(
    max_samples=st.integers(0, 12),
    validation_fraction=st.floats(0, 0.99),
    batch_size=st.integers(1, 2000),
    seed=st.one_of(st.integers(0, 10), st.integers(2**32 - 2, 2**32 + 2)),
)
def test_any_split_of_the_training_data_is_refused_by_name_or_trains(
    max_samples, validation_fraction, batch_size, seed, store
):
    argv = ["train", "--task", "iris", "--epochs", "1", "--system_metrics_interval", "0"]
    argv += [f"--max_samples={max_samples}", f"--validation_fraction={validation_fraction}"]
    argv += [f"--batch_size={batch_size}", f"--seed={seed}"]
    training = max_samples or 120  # iris: 150 flowers, 30 of them for the test
    held_out = -(-validation_fraction * training // 1)
    readable = seed < 2**32 and held_out < training
    code, stderr = answer(argv)
    if readable and code == 2:  # a few examples of one class: the refusal must say so
        assert "single class" in stderr, stderr[-2000:]
        return
    check_answer_of(code, stderr, readable, names=["max_samples", "validation_fraction", "seed"])


def check_answer_of(code, stderr, readable, names):
    assert "Traceback" not in stderr, stderr[-3000:]
    if readable:
        assert code == 0, stderr[-3000:]
        return
    (error,) = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == 2 and any(name in error for name in names), error


def test_a_zip_that_is_not_an_npz_is_refused_by_name(store, tmp_path):
    path = tmp_path / "mnist.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x_train.txt", "not an array")
    check_answer(store, ["train", "--task", "mnist_mlp", "--data", str(path), *QUICK_TRAINING], False, [str(path)])


# --- edge cases, each by name ---------------------------------------------------------------------

CHURN_HEADER = ",".join(CHURN_COLUMNS)


def churn_rows(rows, change=None):
    frame = churn_frame(rows, np.random.default_rng(0), exited=np.arange(rows) % 2)  # both classes
    if change:
        column, row, value = change
        frame[column] = frame[column].astype(object)
        frame.loc[row, column] = value
    return frame.to_csv(index=False)


def mnist_arrays(**changes):
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (30, 28, 28), "uint8"),
        "y_train": np.arange(30) % 10,
        "x_test": rng.integers(0, 256, (10, 28, 28), "uint8"),
        "y_test": np.arange(10) % 10,
    }
    return {**arrays, **changes}


EDGE_CASES = {
    "seed 2^32": (["--task", "xor", "--seed", "4294967296"], None, "error: seed: 4294967296 is out of range"),
    "max_samples 1": (["--task", "iris", "--max_samples", "1"], None, "error: max_samples, validation_fraction:"),
    "iris 3 and 0.9": (
        ["--task", "iris", "--max_samples", "3", "--validation_fraction", "0.9"],
        None,
        "error: max_samples, validation_fraction: holding out 0.9 of 3",
    ),
    "experiment of 257+": (["--task", "xor", "--experiment", "e" * 257], None, "error: experiment: eeee"),
    "value of 100,000": (["--task", "xor", "--learning_rate", "9" * 100_000], None, "error: learning_rate: '999"),
    "churn folder": (["--task", "churn", "--data", "{tmp}"], None, "is a folder, not a file"),
    "churn inf": (["--task", "churn"], churn_rows(40, ("Age", 2, "inf")), "column Age has a non-numeric or infinite"),
    "churn header only": (["--task", "churn"], CHURN_HEADER + "\n", "no data rows below the header"),
    "churn 3 rows": (["--task", "churn"], churn_rows(3), "hold a single class"),
    "churn no Geography": (
        ["--task", "churn"],
        churn_rows(40, ("Geography", 5, None)),
        "column Geography has a missing",
    ),
    "churn one class": (["--task", "churn"], churn_rows(40, ("Exited", slice(None), 0)), "hold a single class"),
    "npz empty train": (
        ["--task", "mnist_mlp"],
        mnist_arrays(x_train=np.zeros((0, 28, 28), "uint8"), y_train=np.zeros(0, int)),
        "the training split is empty",
    ),
    "npz empty test": (
        ["--task", "mnist_mlp"],
        mnist_arrays(x_test=np.zeros((0, 28, 28), "uint8"), y_test=np.zeros(0, int)),
        "the test split is empty",
    ),
    "npz NaN": (
        ["--task", "mnist_mlp"],
        mnist_arrays(x_train=np.full((30, 28, 28), np.nan)),
        "x_train holds NaN or infinite pixel values",
    ),
    "npz above 255": (
        ["--task", "mnist_mlp"],
        mnist_arrays(x_train=np.full((30, 28, 28), 300.0)),
        "x_train holds pixel values from 300 to 300, expected 0-255 (or 0-1 floats)",
    ),
    "path with a newline": (["--task", "churn", "--data", "{tmp}/a\nb.csv"], None, "not found at {tmp}/a\\nb.csv"),
}


@pytest.mark.parametrize(("argv", "data", "message"), EDGE_CASES.values(), ids=EDGE_CASES.keys())
def test_each_named_case_is_one_line_naming_the_parameter_or_file(argv, data, message, store, tmp_path):
    argv = [word.replace("{tmp}", str(tmp_path)) for word in argv]
    if isinstance(data, str):
        (tmp_path / "churn.csv").write_text(data)
        argv += ["--data", str(tmp_path / "churn.csv")]
    elif data is not None:
        np.savez(tmp_path / "mnist.npz", **data)
        argv += ["--data", str(tmp_path / "mnist.npz")]
    code, stderr = answer(["train", *argv, *QUICK_TRAINING])
    (error,) = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == 2 and "Traceback" not in stderr
    assert message.replace("{tmp}", str(tmp_path)) in error
    assert len(error) < 300 and not all_runs(store)


def test_a_study_of_another_entry_point_is_refused_before_its_experiment_is_created(store, tmp_path, monkeypatch):
    journal = str(tmp_path / "optuna.journal")
    study = optuna.create_study(study_name="shared", storage=open_storage(journal, None, None), direction="minimize")
    study.set_user_attr("entry_point", "linear")
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID")  # else the store's own experiment is used
    code, stderr = answer(["sweep", "--task", "xor", "--storage", journal, "--study_name", "shared", "--n_trials", "1"])
    (error,) = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == 2 and error == "error: study_name: study 'shared' sweeps linear, not xor; choose another name"
    assert store.get_experiment_by_name("xor") is None and not all_runs(store)
