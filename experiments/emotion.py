"""FER2013 facial expressions: the tutorial's emotion CNN on 48x48 grayscale faces, 7 classes.

Reads either Kaggle layout: image folders (`train/<emotion>/*.jpg` with `test/<emotion>/`
holding PublicTest_* and PrivateTest_* files, or Training/PublicTest/PrivateTest folders),
or a CSV with columns emotion, pixels, Usage (`fer2013.csv`, or `icml_face_data.csv`, whose
column names start with a space); each also inside a .zip or .tar.gz.
PublicTest validates, PrivateTest is the held-out test split.
"""

import io
import sys
import tarfile
import zipfile
import zlib
from pathlib import PurePosixPath

import lazy_loader as lazy
import numpy as np
from optuna.distributions import FloatDistribution, IntDistribution
from PIL import Image, UnidentifiedImageError

from experiments.datafiles import PROJECT_DATA, existing_path, read_csv
from experiments.task import InputError, Param, Splits, Task, Variant, shown
from experiments.views import mirror, shift

# Imported when data is read or a model built: --help, --dry_run and a refused parameter need neither.
keras = lazy.load("keras")
pd = lazy.load("pandas")
scipy = lazy.load("scipy")

EMOTIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
CLASS_NAMES = tuple(emotion.capitalize() for emotion in EMOTIONS)
IMAGE_SIZE = 48
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif"}
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
# Split folder (lower-case) -> split; "test" is divided by file-name prefix.
SPLIT_FOLDERS = {
    "train": "train",
    "training": "train",
    "publictest": "val",
    "privatetest": "test",
    "test": "test",
}
USAGE_SPLITS = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
# Kaggle's two CSV forms, looked for inside a folder or archive in this order. A CSV given
# itself is read whatever its name.
CSV_NAMES = ("fer2013.csv", "icml_face_data.csv")
CSV_COLUMNS = ("emotion", "pixels", "Usage")
# What operating systems leave beside the data (lower-case names; besides these, every
# dotfile, such as .DS_Store and AppleDouble ._* files): skipped in any folder or archive.
OS_METADATA = {"thumbs.db", "ehthumbs.db", "ehthumbs_vista.db", "desktop.ini", "icon\r", "__macosx"}
LAYOUTS = "train/<emotion>/ and test/<emotion>/ image folders, or fer2013.csv or icml_face_data.csv"
DEFAULT_LOCATIONS = ("fer2013", "fer2013.csv", "fer2013.tar.gz", "fer2013.zip")
HOW_TO_GET = (
    "download FER2013 from Kaggle (image folders: https://www.kaggle.com/datasets/msambare/fer2013; "
    "fer2013.csv: https://www.kaggle.com/c/challenges-in-representation-learning-facial-expression-"
    "recognition-challenge/data) and pass -P data=/path/to/it (a folder, a CSV such as fer2013.csv or "
    "icml_face_data.csv, .zip or .tar.gz), or put it at data/fer2013"
)


def load_fer2013(data_path, seed):
    if data_path is None:
        found = [PROJECT_DATA / name for name in DEFAULT_LOCATIONS if (PROJECT_DATA / name).exists()]
        if not found:
            raise InputError(f"FER2013 not found in {PROJECT_DATA}: {HOW_TO_GET}")
        data_path = found[0]
    path = existing_path(data_path, "FER2013 data", HOW_TO_GET)
    arrays = _read_arrays(path)
    if not arrays["train"][0].size or not arrays["test"][0].size:
        raise InputError(f"{shown(path, None)}: found no training or no test images; expected {LAYOUTS}")
    x_val, y_val = arrays["val"]
    splits = Splits(
        *arrays["train"],
        *arrays["test"],
        x_val=x_val if x_val.size else None,
        y_val=y_val if x_val.size else None,
        source=str(path),
        class_names=CLASS_NAMES,
    )
    warn_of_missing_classes(splits)
    check_sharpness(splits)
    return splits


def _read_arrays(path):
    """{split: (images, labels)} from a CSV, or from the image folders (else a CSV) of a folder or archive."""
    if path.is_file() and path.suffix.lower() == ".csv":  # its columns, not its name, say what it is
        return _from_csv(path.read_bytes(), shown(path, None))
    entries = [(parts, read) for parts, read in _read_entries(path) if not _is_os_metadata(parts)]
    tables = [(parts, read) for parts, read in entries if parts.name.lower() in CSV_NAMES]
    if tables and not any(_split_of(parts) for parts, _ in entries):
        parts, read = min(tables, key=lambda table: (CSV_NAMES.index(table[0].name.lower()), str(table[0])))
        return _from_csv(read(), _where(path, parts))
    return _from_image_files(entries, path)


def _read_entries(path):
    """Yield (relative path, reader) for every file in a folder or a .zip or .tar(.gz)."""
    name = path.name.lower()
    if path.is_dir():
        for file in sorted(path.rglob("*")):
            if file.is_file():
                yield PurePosixPath(file.relative_to(path).as_posix()), file.read_bytes
    elif name.endswith(".zip"):
        try:
            archive = zipfile.ZipFile(path)
        except zipfile.BadZipFile as error:
            raise InputError(f"{shown(path, None)} is not a readable zip archive ({shown(error)})") from None
        for info in archive.infolist():
            if not info.is_dir():
                yield PurePosixPath(info.filename), lambda info=info: _read_member(archive, info, path)
    elif name.endswith((".tar", ".tar.gz", ".tgz")):
        try:
            with tarfile.open(path) as archive:
                for member in archive:
                    if member.isfile():
                        data = archive.extractfile(member).read()
                        yield PurePosixPath(member.name), lambda data=data: data
        except (tarfile.TarError, EOFError, OSError) as error:
            raise InputError(f"{shown(path, None)} is not a readable tar archive ({shown(error)})") from None
    else:
        archives = ", ".join(ARCHIVE_SUFFIXES)
        raise InputError(f"{shown(path, None)}: expected a folder, a .csv file or a {archives} archive")


def _read_member(archive, info, path):
    """A zip member's bytes; a corrupt, encrypted or Deflate64 member is refused by name."""
    try:
        return archive.read(info)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError, NotImplementedError) as error:
        raise InputError(f"{_where(path, info.filename)} cannot be read from the archive ({shown(error)})") from None


def _is_os_metadata(parts):
    """Thumbs.db, desktop.ini, .DS_Store, ._* and the like, or anything in a __MACOSX/ or dot folder."""
    return any(part.startswith(".") or part.lower() in OS_METADATA for part in parts.parts)


def _where(root, parts):
    """A file inside `root` as a message names it: one line, whole."""
    return shown(f"{root}/{parts}", None)


def _split_of(parts):
    """The split of a file at <split>/<emotion>/<file>, or None for files outside the layout."""
    if len(parts.parts) < 3:
        return None
    split = SPLIT_FOLDERS.get(parts.parts[-3].lower())
    if split == "test" and parts.name.startswith("PublicTest"):
        return "val"
    return split


def _from_image_files(entries, root):
    images = {"train": [], "val": [], "test": []}
    labels = {"train": [], "val": [], "test": []}
    for parts, read in entries:
        split = _split_of(parts)
        if split is None:
            continue
        where = _where(root, parts)
        if parts.suffix.lower() not in IMAGE_SUFFIXES:
            raise InputError(f"{where} is not an image file (expected {', '.join(sorted(IMAGE_SUFFIXES))})")
        emotion = parts.parent.name.lower()
        if emotion not in EMOTIONS:
            raise InputError(f"{where}: folder '{shown(parts.parent.name)}' is not an emotion ({', '.join(EMOTIONS)})")
        images[split].append(_decode(read(), where))
        labels[split].append(EMOTIONS.index(emotion))
    return {split: _stack(images[split], labels[split]) for split in images}


def _decode(data, where):
    """A grayscale 48x48 uint8 image; colour is converted and other sizes are resized, as
    the tutorial's loader did."""
    if not data:
        raise InputError(f"{where} is empty (0 bytes), not an image")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image = image.convert("L")
            if image.size != (IMAGE_SIZE, IMAGE_SIZE):
                image = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
            return np.asarray(image, dtype="uint8")
    except UnidentifiedImageError:  # its own text names the in-memory file, not ours
        raise InputError(f"{where} is not a readable image (not a format Pillow reads)") from None
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise InputError(f"{where} is not a readable image ({shown(error)})") from None


def _from_csv(data, where):
    """{split: (images, labels)} from a CSV of emotion, pixels and Usage; a bad cell is
    refused with its column and data row (1-based, the header not counted)."""
    frame = read_csv(io.BytesIO(data), (), name=where)
    frame.columns = [str(column).strip() for column in frame.columns]  # icml_face_data.csv: " Usage"
    missing = [column for column in CSV_COLUMNS if column not in frame.columns]
    if missing:
        raise InputError(f"{where} lacks required column(s): {', '.join(missing)}")
    splits = _usage_splits(frame["Usage"], where)
    labels = _labels(frame["emotion"], where)
    images = np.stack([_pixels(text, where, row) for row, text in enumerate(frame["pixels"], start=1)])[..., np.newaxis]
    return {split: (images[splits == split], labels[splits == split]) for split in USAGE_SPLITS.values()}


def _usage_splits(cells, where):
    """Each row's split; the usages that make a training and a test split must be there."""
    splits = np.array([USAGE_SPLITS.get(cell.strip(), "") if isinstance(cell, str) else "" for cell in cells])
    _refuse_first(cells, splits == "", where, "Usage", "Training, PublicTest or PrivateTest")
    for usage in ("Training", "PrivateTest"):
        if not (splits == USAGE_SPLITS[usage]).any():
            raise InputError(f"{where}: no data row has Usage {usage}; expected {', '.join(USAGE_SPLITS)} rows")
    return splits


def _labels(cells, where):
    numbers = pd.to_numeric(cells, errors="coerce")
    _refuse_first(cells, ~numbers.isin(range(len(EMOTIONS))).to_numpy(), where, "emotion", "integers 0-6")
    return numbers.to_numpy().astype("int64")


def _refuse_first(cells, bad, where, column, rule):
    if bad.any():
        row = int(bad.argmax())
        raise _bad_cell(where, column, rule, row + 1, _found(cells.iloc[row]))


def _found(cell):
    """What a data row holds, in words: `is empty`, or `has 'abc'` (short, one line)."""
    return "is empty" if pd.isna(cell) else f"has '{shown(cell)}'"


def _bad_cell(where, column, rule, row, found):
    return InputError(f"{where}: column {column} must hold {rule}; data row {row} {found}")


def _pixels(text, where, row):
    rule = f"{IMAGE_SIZE**2} integers 0-255 per row"
    if not isinstance(text, str):
        raise _bad_cell(where, "pixels", rule, row, _found(text))
    words = text.split()
    if len(words) != IMAGE_SIZE**2:
        raise _bad_cell(where, "pixels", rule, row, f"has {len(words)} values")
    try:
        values = np.array(words, dtype="int64")
    except (ValueError, OverflowError):
        bad = next(word for word in words if not _is_int64(word))
        raise _bad_cell(where, "pixels", rule, row, f"has '{shown(bad)}'") from None
    outside = (values < 0) | (values > 255)
    if outside.any():
        raise _bad_cell(where, "pixels", rule, row, f"has {values[outside.argmax()]}")
    return values.astype("uint8").reshape(IMAGE_SIZE, IMAGE_SIZE)


def _is_int64(word):
    try:
        np.array(word, dtype="int64")
    except (ValueError, OverflowError):
        return False
    return True


def _stack(images, labels):
    if not images:
        return np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 1), "uint8"), np.zeros((0,), "int64")
    return np.stack(images)[..., np.newaxis], np.array(labels, dtype="int64")


def warn_of_missing_classes(splits):
    """A class without training images cannot be learned; one without test images has no
    recall to report (the test metrics leave it out rather than report 0). The model keeps
    an output for each class either way."""
    source = shown(splits.source, None)
    for labels, split, consequence in (
        (splits.y_train, "training", "the model cannot learn it"),
        (splits.y_test, "test", "its recall is not reported"),
    ):
        for label in np.flatnonzero(np.bincount(labels, minlength=len(EMOTIONS)) == 0):
            name = CLASS_NAMES[label]
            print(f"warning: {source}: no {split} images of class {name}; {consequence}", file=sys.stderr)


# `emotion_cnn` stretches every face to the full 0-255 range (AutoContrast), in training and
# serving alike: faces photographed in flat light then look like the rest.
# The tutorial's ImageDataGenerator(rescale, shear, zoom, horizontal_flip) as Keras 3 layers;
# they are active only in training, so the logged model takes raw pixels.
# Shear is one-sided, (0, SHEAR): Keras 3.15 saves a symmetric factor as [-0.1, 0.1] and then
# refuses to load it. The random flip before it mirrors half the images, covering both directions.
SHEAR = (0.0, 0.1)
ZOOM = 0.1
SHIFT = 0.1
VGG_WIDTHS = (1, 2, 4)  # each VGG block's filters, as multiples of `filters`
HEAD_DROPOUT = 0.3  # before the VGG net's classifier
VIEW_SHIFT = 2  # pixels each served view of a face is moved by (`average_over_views`)
SHARPNESS_RATIO = 0.5  # a split under half as sharp as the other gets a warning


def emotion_cnn(input_shape, num_outputs, filters, units, dropout):
    """The tutorial's CNN: 30 5x5, pool, 15 3x3, pool, dropout, dense 100, dense 50, softmax 7."""
    return keras.Sequential(
        [
            keras.Input(shape=input_shape),
            keras.layers.AutoContrast(value_range=(0, 255)),
            keras.layers.Rescaling(1 / 255),
            keras.layers.RandomFlip("horizontal"),
            keras.layers.RandomZoom(ZOOM),
            keras.layers.RandomShear(x_factor=SHEAR, y_factor=SHEAR),
            keras.layers.Conv2D(filters, 5, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(filters // 2, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Dropout(dropout),
            keras.layers.Flatten(),
            keras.layers.Dense(units, activation="relu"),
            keras.layers.Dense(units // 2, activation="relu"),
            keras.layers.Dense(num_outputs, activation="softmax"),
        ],
        name="emotion_cnn",
    )


def emotion_vgg(input_shape, num_outputs, filters, units, dropout):
    """Beyond the tutorial: a stem of `filters` 3x3 convolutions with stride 2, then three
    VGG blocks (two 3x3 convolutions with batch norm, then pooling and dropout) of `filters`,
    twice and four times as many; global average pooling, dense `units`. The strided stem
    halves the image at once: no convolution runs at the full 48x48, the costliest size."""

    def conv_bn_relu(width, strides=1):
        return [
            keras.layers.Conv2D(width, 3, strides=strides, padding="same", use_bias=False),
            keras.layers.BatchNormalization(),
            keras.layers.Activation("relu"),
        ]

    def vgg_block(width):
        return [*conv_bn_relu(width), *conv_bn_relu(width), keras.layers.MaxPooling2D(), keras.layers.Dropout(dropout)]

    return keras.Sequential(
        [
            keras.Input(shape=input_shape),
            keras.layers.Rescaling(1 / 255),
            keras.layers.RandomFlip("horizontal"),
            keras.layers.RandomTranslation(SHIFT, SHIFT, fill_mode="nearest"),
            keras.layers.RandomZoom(ZOOM, fill_mode="nearest"),
            *conv_bn_relu(filters, strides=2),
            *[layer for multiple in VGG_WIDTHS for layer in vgg_block(multiple * filters)],
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(units, activation="relu"),
            keras.layers.Dropout(HEAD_DROPOUT),
            keras.layers.Dense(num_outputs, activation="softmax"),
        ],
        name="emotion_vgg",
    )


def average_over_views(model):
    """Test-time augmentation: the trained net's answers averaged over ten views of a face,
    the face and its mirror, each as it is and moved VIEW_SHIFT pixels up, down, left and
    right. Each view is paired with the same view of the mirrored face, so that a face and
    its mirror get exactly the same answer. Wrapped around the net after training: training
    pays nothing for it, and each prediction costs ten of the net's."""
    shape = model.input_shape[1:]
    inputs = keras.Input(shape=shape)
    flip = mirror(shape)
    pairs = [keras.layers.Average()([model(inputs), model(flip(inputs))])]
    moves = ((0, VIEW_SHIFT, "down"), (0, -VIEW_SHIFT, "up"), (1, VIEW_SHIFT, "right"), (1, -VIEW_SHIFT, "left"))
    for axis, offset, name in moves:
        view = shift(shape, axis, offset, name)(inputs)
        # The mirror moved right is the face moved left, mirrored: the same view of a mirrored face.
        mirrored_offset = -offset if axis == 1 else offset
        mirrored_view = flip(shift(shape, axis, mirrored_offset, f"mirror_{name}")(inputs))
        pairs.append(keras.layers.Average()([model(view), model(mirrored_view)]))
    outputs = keras.layers.Average()(pairs)
    return keras.Model(inputs, outputs, name=f"{model.name}_view_averaged")


def check_sharpness(splits):
    """Warn when training and test faces differ much in sharpness (median variance of the
    Laplacian), either way: a model then learns features the test images do not share."""
    train, test = _sharpness(splits.x_train), _sharpness(splits.x_test)
    if min(train, test) < SHARPNESS_RATIO * max(train, test):
        blurrier = "training" if train < test else "test"
        print(
            f"warning: {splits.source}: training and test images differ in sharpness ({train:.0f} against "
            f"{test:.0f}, the median variance of the Laplacian; the {blurrier} images are blurrier); expect "
            "test accuracy well below training accuracy",
            file=sys.stderr,
        )


def _sharpness(images, sample=2000):
    faces = images[:sample, :, :, 0].astype("float32")
    laplacian = scipy.ndimage.laplace(faces, axes=(1, 2))  # each face on its own
    return float(np.median(laplacian.reshape(len(faces), -1).var(axis=1)))


TASK = Task(
    name="emotion",
    kind="multiclass",
    load=load_fer2013,
    variants={
        "cnn": Variant(
            build=emotion_cnn,
            description="30 5x5, pool, 15 3x3, pool, dropout, dense 100-50, softmax 7, augmented",
            knobs={
                "filters": Param(int, 30, "filters in the first convolution; the second has half as many", ge=2),
                "units": Param(int, 100, "units in the first dense layer; the second has half as many", ge=2),
                "dropout": Param(float, 0.2, "dropout rate before the dense layers", ge=0, lt=1),
            },
            search_space={
                "learning_rate": FloatDistribution(1e-4, 1e-2, log=True),
                "filters": IntDistribution(16, 64, step=8),
                "units": IntDistribution(32, 256, log=True),
                "dropout": FloatDistribution(0.0, 0.5),
            },
            reference="43.4% after 3 epochs",
        ),
        "cnn_deep": Variant(
            build=emotion_vgg,
            description="a stride-2 stem and three VGG blocks (32 to 128 filters) with batch norm, global pooling, "
            "dense 128, flips, shifts and zoom; served averaged over ten views of each face (mirrored, moved 2 pixels)",
            knobs={
                "filters": Param(
                    int, 32, "filters in the stem and the first block; the next two have 2 and 4 times as many", ge=1
                ),
                "units": Param(int, 128, "units in the dense layer", ge=1),
                "dropout": Param(float, 0.0, "dropout rate after each block", ge=0, lt=1),
            },
            defaults={"epochs": 26, "optimizer": "adamw", "learning_rate": 0.003, "lr_schedule": "cosine"},
            serve=average_over_views,
            search_space={
                "learning_rate": FloatDistribution(3e-4, 1e-2, log=True),
                "filters": IntDistribution(16, 48, step=8),
                "units": IntDistribution(64, 512, log=True),
                "dropout": FloatDistribution(0.0, 0.4),
            },
        ),
    },
    default_variant="cnn",
    defaults={"epochs": 30, "batch_size": 64, "optimizer": "adam", "learning_rate": 0.001},
    data_help="FER2013: " + HOW_TO_GET,
    pixel_inputs=True,
)
