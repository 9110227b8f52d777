"""The loaders on tiny files in the real formats, and the one-line errors for bad files."""

import re
import zipfile

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from experiments import InputError, resolve
from experiments.churn import load_churn
from experiments.emotion import load_fer2013
from experiments.mnist import load_mnist
from pipelines.data import prepare_data
from pipelines.params import parse_params


def test_mnist_npz_loads_as_uint8_images(mnist_npz):
    splits = load_mnist(mnist_npz, seed=0)
    assert splits.x_train.shape == (120, 28, 28, 1) and splits.x_train.dtype == np.uint8
    assert splits.x_test.shape == (40, 28, 28, 1)
    assert set(splits.y_train) == set(range(10)) and splits.source == str(mnist_npz)


def test_mnist_missing_file_says_how_to_get_it(tmp_path):
    with pytest.raises(InputError, match=r"MNIST file not found at .*nope\.npz: put Keras' mnist\.npz"):
        load_mnist(tmp_path / "nope.npz", seed=0)


def test_mnist_corrupt_or_incomplete_files_are_refused(tmp_path):
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"PK\x03\x04 this is not a zip archive")
    with pytest.raises(InputError, match=r"corrupt\.npz is not a readable \.npz file"):
        load_mnist(corrupt, seed=0)
    partial = tmp_path / "partial.npz"
    np.savez(partial, x_train=np.zeros((2, 28, 28), "uint8"), y_train=np.zeros(2))
    with pytest.raises(InputError, match=r"partial\.npz lacks array\(s\) x_test, y_test"):
        load_mnist(partial, seed=0)
    wrong_shape = tmp_path / "wrong.npz"
    np.savez(wrong_shape, x_train=np.zeros((2, 32, 32)), y_train=np.zeros(2), x_test=np.zeros((1, 28, 28)), y_test=[0])
    with pytest.raises(InputError, match=r"x_train has shape \(2, 32, 32\), expected \(n, 28, 28\)"):
        load_mnist(wrong_shape, seed=0)


def test_churn_is_encoded_and_scaled_on_the_training_split_only(churn_csv):
    splits = load_churn(churn_csv, seed=0)
    assert splits.x_train.shape == (160, 11) and splits.x_test.shape == (40, 11)  # 2 geography + gender + 8
    np.testing.assert_allclose(splits.x_train.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(splits.x_train.std(axis=0), 1, atol=1e-3)
    assert abs(splits.x_test.mean(axis=0)).max() > 1e-3  # test statistics were not used
    exited = pd.read_csv(churn_csv)["Exited"].mean()
    assert splits.y_train.mean() == pytest.approx(exited, abs=0.01)  # stratified
    assert splits.y_test.mean() == pytest.approx(exited, abs=0.02)


def test_churn_without_a_required_column_is_refused(churn_csv, tmp_path):
    frame = pd.read_csv(churn_csv).drop(columns=["Geography"])
    frame.to_csv(tmp_path / "no_geo.csv", index=False)
    with pytest.raises(InputError, match=r"no_geo\.csv lacks required column\(s\): Geography"):
        load_churn(tmp_path / "no_geo.csv", seed=0)


def test_churn_with_a_non_numeric_cell_is_refused(churn_csv, tmp_path):
    frame = pd.read_csv(churn_csv)
    frame["Age"] = frame["Age"].astype(object)
    frame.loc[3, "Age"] = "forty"
    frame.to_csv(tmp_path / "bad_age.csv", index=False)
    with pytest.raises(InputError, match=r"column Age has a non-numeric or infinite value \('forty'\) at data row 4"):
        load_churn(tmp_path / "bad_age.csv", seed=0)


def test_churn_binary_file_is_refused(tmp_path):
    path = tmp_path / "churn.csv"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(InputError, match=r"churn\.csv"):
        load_churn(path, seed=0)


def test_bundled_churn_csv_is_the_default():
    splits = load_churn(None, seed=0)
    assert splits.x_train.shape[1] == 11 and len(splits.x_train) + len(splits.x_test) == 10_000


def test_fer_folder_splits_public_and_private_test(fer_folder):
    splits = load_fer2013(fer_folder, seed=0)
    assert splits.x_train.shape == (42, 48, 48, 1) and splits.x_train.dtype == np.uint8
    assert len(splits.x_val) == 14 and len(splits.x_test) == 14  # PublicTest / PrivateTest
    assert splits.class_names == ("Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral")
    assert np.bincount(splits.y_train).tolist() == [6] * 7


def test_fer_split_folders_layout(fer_folder, tmp_path):
    root = tmp_path / "by_usage"
    for image in fer_folder.rglob("*.jpg"):
        usage = image.name.split("_")[0]
        target = root / usage / image.parent.name.capitalize() / image.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(image.read_bytes())
    splits = load_fer2013(root, seed=0)
    assert (len(splits.x_train), len(splits.x_val), len(splits.x_test)) == (42, 14, 14)


def test_fer_archives_and_csv_give_the_same_arrays(fer_folder, fer_tarball, fer_csv, tmp_path):
    from_folder = load_fer2013(fer_folder, seed=0)
    from_tar = load_fer2013(fer_tarball, seed=0)
    np.testing.assert_array_equal(np.sort(from_folder.y_test), np.sort(from_tar.y_test))
    assert from_tar.x_train.shape == from_folder.x_train.shape
    zipped = tmp_path / "fer2013.zip"
    with zipfile.ZipFile(zipped, "w") as archive:
        for image in fer_folder.rglob("*.jpg"):
            archive.write(image, f"fer2013/{image.relative_to(fer_folder)}")
    assert load_fer2013(zipped, seed=0).x_val.shape == (14, 48, 48, 1)
    from_csv = load_fer2013(fer_csv, seed=0)
    assert (len(from_csv.x_train), len(from_csv.x_val), len(from_csv.x_test)) == (42, 14, 14)


def test_fer_images_of_another_size_are_resized(fer_folder):
    Image.new("RGB", (96, 64), "white").save(fer_folder / "train" / "happy" / "big.png")
    splits = load_fer2013(fer_folder, seed=0)
    assert splits.x_train.shape == (43, 48, 48, 1)
    assert (splits.x_train == 255).all(axis=(1, 2, 3)).sum() == 1


@pytest.mark.parametrize(
    ("relative", "content", "message"),
    [
        ("train/happy/notes.txt", b"hello", r"train/happy/notes\.txt is not an image file"),
        ("train/happy/broken.jpg", b"\xff\xd8 not really a jpeg", r"train/happy/broken\.jpg is not a readable image"),
        ("train/bored/x.jpg", None, r"train/bored/x\.jpg: folder 'bored' is not an emotion"),
    ],
)
def test_fer_bad_files_are_refused_by_name(fer_folder, relative, content, message):
    path = fer_folder / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        content if content is not None else (fer_folder / "train/happy").glob("*.jpg").__next__().read_bytes()
    )
    with pytest.raises(InputError, match=message):
        load_fer2013(fer_folder, seed=0)


def test_fer_hidden_files_are_ignored(fer_folder):
    (fer_folder / "train" / "happy" / ".DS_Store").write_bytes(b"\0\1")
    assert len(load_fer2013(fer_folder, seed=0).x_train) == 42


def test_fer_missing_data_says_where_to_get_it(tmp_path):
    with pytest.raises(InputError, match=r"FER2013 data not found at .*: download FER2013 from Kaggle .* -P data="):
        load_fer2013(tmp_path / "fer2013", seed=0)


def test_fer_csv_with_bad_pixels_is_refused(fer_csv, tmp_path):
    frame = pd.read_csv(fer_csv)
    frame.loc[0, "pixels"] = "1 2 3"
    frame.to_csv(tmp_path / "fer2013.csv", index=False)
    with pytest.raises(InputError, match=re.escape("column pixels must hold 2304 integers 0-255 per row")):
        load_fer2013(tmp_path / "fer2013.csv", seed=0)


def test_prepare_data_subsamples_and_holds_out_validation(mnist_npz):
    task, variant = resolve("mnist_cnn")
    params = parse_params(task, variant, {"data": str(mnist_npz), "max_samples": "100", "validation_fraction": "0.2"})
    splits = prepare_data(task, variant, params)
    assert (len(splits.x_train), len(splits.x_val), len(splits.x_test)) == (80, 20, 40)
    assert np.bincount(splits.y_val, minlength=10).tolist() == [2] * 10  # stratified


def test_augment_variant_adds_inverted_copies(mnist_npz):
    task, variant = resolve("mnist_cnn_augment")
    splits = prepare_data(task, variant, parse_params(task, variant, {"data": str(mnist_npz)}))
    half = len(splits.x_train) // 2
    np.testing.assert_array_equal(splits.x_train[half:], 255 - splits.x_train[:half])
    np.testing.assert_array_equal(splits.y_train[half:], splits.y_train[:half])


# --- FER2013: bad input ---


def fer_error(path):
    """The one line that `load_fer2013(path)` refuses the data with: no newline, no Python repr."""
    with pytest.raises(InputError) as refused:
        load_fer2013(path, seed=0)
    message = str(refused.value)
    assert "\n" not in message and not re.search(r"np\.\w+\(|<_io", message), message
    return message


@pytest.mark.parametrize(
    ("split", "folder", "consequence"),
    [("training", "train", "the model cannot learn it"), ("test", "test", "its recall is not reported")],
)
def test_fer_class_without_images_is_warned_of_and_keeps_its_output(fer_folder, capsys, split, folder, consequence):
    for image in (fer_folder / folder / "disgust").iterdir():
        image.unlink()
    splits = load_fer2013(fer_folder, seed=0)
    assert splits.class_names == ("Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral")
    warnings = capsys.readouterr().err.strip().splitlines()
    assert warnings == [f"warning: {fer_folder}: no {split} images of class Disgust; {consequence}"]


def test_fer_metrics_leave_out_a_class_without_test_examples():
    from pipelines.reporting import classification_metrics

    names = ("Angry", "Disgust", "Fear")
    y_true = np.array([0, 0, 2, 2])
    outputs = np.eye(3)[[0, 1, 2, 0]]  # one Angry predicted as Disgust, one Fear as Angry
    metrics = classification_metrics("multiclass", y_true, outputs, names)
    assert set(metrics) == {"test_macro_f1", "test_recall_Angry", "test_recall_Fear"}
    assert metrics["test_recall_Angry"] == 0.5 and metrics["test_recall_Fear"] == 0.5
    assert metrics["test_macro_f1"] == pytest.approx(np.mean([0.5, 2 / 3]))  # Angry: P 1/2, R 1/2; Fear: P 1, R 1/2


def test_fer_run_without_disgust_test_images_logs_no_disgust_recall(store, tiny, fer_folder):
    import mlflow

    from pipelines.train import train

    for image in (fer_folder / "test" / "disgust").iterdir():
        image.unlink()
    result = train(*tiny.params("emotion_cnn"))
    recalls = {name for name in store.get_run(result.run_id).data.metrics if name.startswith("test_recall_")}
    assert recalls == {f"test_recall_{name}" for name in ("Angry", "Fear", "Happy", "Sad", "Surprise", "Neutral")}
    matrix = mlflow.artifacts.load_dict(f"runs:/{result.run_id}/evaluation/confusion_matrix.json")
    assert len(matrix["labels"]) == 7
    model = mlflow.pyfunc.load_model(f"models:/{result.model_id}")
    assert model.predict(np.zeros((1, 48, 48, 1), "float32")).shape == (1, 7)


@pytest.mark.parametrize(
    "relative",
    [
        "train/happy/Thumbs.db",
        "test/happy/THUMBS.DB",
        "train/sad/ehthumbs.db",
        "train/sad/desktop.ini",
        "train/sad/Desktop.ini",
        "train/happy/.DS_Store",
        "train/happy/._Training_00.jpg",
        "train/happy/Icon\r",
        "train/happy/.notes",
        "__MACOSX/train/happy/._Training_00.jpg",
        "train/happy/.thumbnails/x.png",
    ],
)
def test_fer_os_metadata_files_are_skipped(fer_folder, relative):
    path = fer_folder / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0\x05\x16\x07 metadata, not an image")
    splits = load_fer2013(fer_folder, seed=0)
    assert (len(splits.x_train), len(splits.x_val), len(splits.x_test)) == (42, 14, 14)


def test_fer_zip_made_on_macos_and_windows_loads(fer_folder, tmp_path):
    zipped = tmp_path / "fer2013.zip"
    with zipfile.ZipFile(zipped, "w") as archive:
        for image in sorted(fer_folder.rglob("*.jpg")):
            relative = image.relative_to(fer_folder)
            archive.write(image, f"fer2013/{relative}")
            archive.writestr(f"__MACOSX/fer2013/{relative.parent}/._{image.name}", b"\0\x05\x16\x07")
        archive.writestr("fer2013/train/angry/Thumbs.db", b"\xd0\xcf\x11\xe0")
        archive.writestr("fer2013/test/angry/desktop.ini", b"[.ShellClassInfo]")
    splits = load_fer2013(zipped, seed=0)
    assert (len(splits.x_train), len(splits.x_val), len(splits.x_test)) == (42, 14, 14)


def test_fer_csv_of_any_name_is_read_by_its_columns(fer_csv, tmp_path):
    renamed = tmp_path / "faces" / "my_faces.CSV"
    renamed.parent.mkdir()
    renamed.write_bytes(fer_csv.read_bytes())
    splits = load_fer2013(renamed, seed=0)
    assert (len(splits.x_train), len(splits.x_val), len(splits.x_test)) == (42, 14, 14)
    assert splits.source == str(renamed)


def write_icml_face_data(fer_csv, path):
    """Kaggle's other form: columns `emotion, Usage, pixels`, the last two names with a leading space."""
    frame = pd.read_csv(fer_csv)[["emotion", "Usage", "pixels"]]
    frame.rename(columns={"Usage": " Usage", "pixels": " pixels"}).to_csv(path, index=False)
    return path


def test_fer_icml_face_data_csv_is_read_alone_in_a_folder_and_in_a_zip(fer_csv, tmp_path):
    expected = load_fer2013(fer_csv, seed=0)
    alone = write_icml_face_data(fer_csv, tmp_path / "icml_face_data.csv")
    folder = tmp_path / "kaggle"
    folder.mkdir()
    (folder / "icml_face_data.csv").write_bytes(alone.read_bytes())
    (folder / "train.csv").write_text("emotion,pixels\n0,1 2 3\n")  # the competition's other files
    (folder / "example_submission.csv").write_text("Id,Emotion\n")
    zipped = tmp_path / "challenges-in-representation-learning.zip"
    with zipfile.ZipFile(zipped, "w") as archive:
        for file in folder.iterdir():
            archive.write(file, file.name)
    for source in (alone, folder, zipped):
        splits = load_fer2013(source, seed=0)
        np.testing.assert_array_equal(splits.x_train, expected.x_train)
        np.testing.assert_array_equal(splits.y_test, expected.y_test)


def test_fer_folder_prefers_fer2013_csv_to_icml_face_data(fer_csv, tmp_path):
    folder = tmp_path / "both"
    folder.mkdir()
    (folder / "fer2013.csv").write_bytes(fer_csv.read_bytes())
    pd.read_csv(fer_csv).iloc[:-7].to_csv(tmp_path / "fewer.csv", index=False)  # 7 PrivateTest rows fewer
    write_icml_face_data(tmp_path / "fewer.csv", folder / "icml_face_data.csv")
    assert len(load_fer2013(folder, seed=0).x_test) == 14


CSV_RULES = {
    "pixels": "2304 integers 0-255 per row",
    "Usage": "Training, PublicTest or PrivateTest",
    "emotion": "integers 0-6",
}
SEVENS = " 7" * 2303  # the rest of a row's pixels


@pytest.mark.parametrize(
    ("column", "value", "found"),
    [
        ("pixels", "12 x" + SEVENS[2:], "has 'x'"),
        ("pixels", "300" + SEVENS, "has 300"),
        ("pixels", "-1" + SEVENS, "has -1"),
        ("pixels", "2.5" + SEVENS, "has '2.5'"),
        ("pixels", "nan" + SEVENS, "has 'nan'"),
        ("pixels", None, "is empty"),
        ("pixels", "1 2 3", "has 3 values"),
        ("pixels", "7 " * 2305, "has 2305 values"),
        ("pixels", "y" * 200 + SEVENS, "has '" + "y" * 77 + "...'"),  # echoed values are short
        ("pixels", "\x07" + SEVENS, "has '\\x07'"),  # and on one line
        ("Usage", "Validation", "has 'Validation'"),
        ("Usage", None, "is empty"),
        ("emotion", "7", "has '7'"),
        ("emotion", "-1", "has '-1'"),
        ("emotion", "2.5", "has '2.5'"),
        ("emotion", "happy", "has 'happy'"),
        ("emotion", None, "is empty"),
    ],
)
def test_fer_csv_bad_cell_is_refused_with_file_column_and_row(fer_csv, column, value, found):
    frame = pd.read_csv(fer_csv, dtype=str)
    frame.loc[10, column] = value
    frame.to_csv(fer_csv, index=False)
    assert fer_error(fer_csv) == f"{fer_csv}: column {column} must hold {CSV_RULES[column]}; data row 11 {found}"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda frame: frame.drop(columns=["pixels"]), r"fer2013\.csv lacks required column\(s\): pixels$"),
        (lambda frame: frame.drop(columns=["emotion", "Usage"]), r"lacks required column\(s\): emotion, Usage$"),
        (lambda frame: frame[frame.Usage != "PrivateTest"], r"fer2013\.csv: no data row has Usage PrivateTest"),
        (lambda frame: frame.iloc[:0], r"fer2013\.csv: no data row has Usage Training"),
    ],
)
def test_fer_csv_without_a_column_or_a_split_is_refused(fer_csv, change, message):
    change(pd.read_csv(fer_csv)).to_csv(fer_csv, index=False)
    assert re.search(message, fer_error(fer_csv))


def test_fer_bad_csv_row_is_one_error_line_from_the_command_and_no_run(fer_csv, store, capsys):
    from pipelines.cli import main
    from tests.helpers import runs

    frame = pd.read_csv(fer_csv, dtype=str)
    frame.loc[2, "pixels"] = "\x1b[31m" + " 0" * 2303
    frame.to_csv(fer_csv, index=False)
    assert main(["train", "--task", "emotion_cnn", "--data", str(fer_csv), "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {fer_csv}: column pixels must hold 2304 integers 0-255 per row; data row 3 has '\\x1b[31m'"]
    assert runs(store) == []


def jpeg_bytes(mode, size, color):
    import io

    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", r"train/happy/face\.jpg is empty \(0 bytes\), not an image$"),
        (b"Name,Emotion\n", r"train/happy/face\.jpg is not a readable image \(not a format Pillow reads\)$"),
        (jpeg_bytes("L", (48, 48), 128)[:200], r"train/happy/face\.jpg is not a readable image \(.+\)$"),
    ],
)
def test_fer_unreadable_image_is_refused_by_name(fer_folder, content, message):
    (fer_folder / "train" / "happy" / "face.jpg").write_bytes(content)
    assert re.search(message, fer_error(fer_folder))


def test_fer_colour_image_is_read_as_grayscale(fer_folder):
    Image.new("RGB", (48, 48), (255, 0, 0)).save(fer_folder / "train" / "happy" / "red.png")
    splits = load_fer2013(fer_folder, seed=0)
    assert splits.x_train.shape == (43, 48, 48, 1)
    assert (splits.x_train == 76).all(axis=(1, 2, 3)).sum() == 1  # ITU-R 601 luma of pure red


def test_fer_corrupt_zip_member_is_refused_by_name(fer_folder, tmp_path):
    zipped = tmp_path / "fer2013.zip"
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as archive:
        for image in sorted(fer_folder.rglob("*.jpg")):
            archive.write(image, str(image.relative_to(fer_folder)))
    data = bytearray(zipped.read_bytes())
    with zipfile.ZipFile(zipped) as archive:
        first = archive.infolist()[0]
    start = first.header_offset + 30 + len(first.filename) + len(first.extra)
    data[start + first.compress_size // 2] ^= 0xFF  # inside the first member's compressed bytes
    zipped.write_bytes(bytes(data))
    message = fer_error(zipped)
    assert message.startswith(f"{zipped}/{first.filename} cannot be read from the archive ("), message
