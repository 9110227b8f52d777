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
    with pytest.raises(InputError, match=r"column Age has a missing or non-numeric value \('forty'\) at data row 4"):
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
