"""Bank customer churn: will a customer leave? An 11-6-6-1 MLP on Churn_Modelling.csv."""

import functools

import lazy_loader as lazy
from optuna.distributions import FloatDistribution, IntDistribution

from experiments.datafiles import PROJECT_DATA, existing_path, numeric_columns, read_csv, text_columns
from experiments.task import InputError, Param, Splits, Task, Variant

# Imported when data is read or a model built: --help, --dry_run and a refused parameter need neither.
keras = lazy.load("keras")
sklearn = lazy.load("sklearn")

NUMERIC_FEATURES = [
    "CreditScore",
    "Age",
    "Tenure",
    "Balance",
    "NumOfProducts",
    "HasCrCard",
    "IsActiveMember",
    "EstimatedSalary",
]
TARGET = "Exited"
TEST_FRACTION = 0.2
BUNDLED_CSV = PROJECT_DATA / "Churn_Modelling.csv"


def load_churn(data_path, seed):
    path = existing_path(data_path or BUNDLED_CSV, "churn data", "pass -P data=/path/to/Churn_Modelling.csv", file=True)
    # RowNumber, CustomerId and Surname are identifiers: not read, never features.
    frame = read_csv(path, ["Geography", "Gender", *NUMERIC_FEATURES, TARGET])
    if frame.empty:
        raise InputError(f"{path}: no data rows below the header")
    frame = text_columns(frame, ["Geography", "Gender"], path)
    frame = numeric_columns(frame, [*NUMERIC_FEATURES, TARGET], path)
    if not frame[TARGET].isin([0, 1]).all():
        raise InputError(f"{path}: column {TARGET} must hold only 0 and 1")
    features = frame[["Geography", "Gender", *NUMERIC_FEATURES]]
    targets = frame[TARGET].to_numpy("float32")
    split = functools.partial(sklearn.model_selection.train_test_split, test_size=TEST_FRACTION, random_state=seed)
    try:
        x_train, x_test, y_train, y_test = split(features, targets, stratify=targets)
    except ValueError:  # too few rows of a class to stratify: `prepare_data` refuses what cannot train
        try:
            x_train, x_test, y_train, y_test = split(features, targets)
        except ValueError:
            raise InputError(f"{path}: {len(frame)} data row(s) are too few for a training and a test split") from None
    # One-hot Geography (first level dropped), encode Gender, then scale everything,
    # all fitted on the training split only.
    preprocess = sklearn.pipeline.make_pipeline(
        sklearn.compose.ColumnTransformer(
            [
                (
                    "geography",
                    sklearn.preprocessing.OneHotEncoder(drop="first", handle_unknown="ignore"),
                    ["Geography"],
                ),
                (
                    "gender",  # a value the training rows lack (a tiny file) is coded -1, not refused
                    sklearn.preprocessing.OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1),
                    ["Gender"],
                ),
            ],
            remainder="passthrough",
        ),
        sklearn.preprocessing.StandardScaler(),
    )
    x_train = preprocess.fit_transform(x_train).astype("float32")
    x_test = preprocess.transform(x_test).astype("float32")
    return Splits(x_train, y_train, x_test, y_test, source=str(path), class_names=("stays", "exits"))


def mlp(input_shape, num_outputs, units, dropout):
    return keras.Sequential(
        [
            keras.Input(shape=input_shape),
            keras.layers.Dense(units, activation="relu"),
            keras.layers.Dropout(dropout),
            keras.layers.Dense(units, activation="relu"),
            keras.layers.Dropout(dropout),
            keras.layers.Dense(num_outputs, activation="sigmoid"),
        ],
        name="churn_mlp",
    )


TASK = Task(
    name="churn",
    kind="binary",
    load=load_churn,
    variants={
        "mlp": Variant(
            build=mlp,
            description="11-6-6-1 MLP on the preprocessed customer table",
            knobs={
                "units": Param(int, 6, "units in each of the two hidden layers", ge=1),
                "dropout": Param(float, 0.0, "dropout rate after each hidden layer", ge=0, lt=1),
            },
            search_space={
                "learning_rate": FloatDistribution(1e-4, 1e-2, log=True),
                "units": IntDistribution(4, 64, log=True),
                "dropout": FloatDistribution(0.0, 0.5),
            },
            reference="about 86% accuracy",
        )
    },
    short_entry_point=True,
    default_variant="mlp",
    defaults={  # the tutorial's recipe: batch 10, 100 epochs
        "epochs": 100,
        "batch_size": 10,
        "optimizer": "adam",
        "learning_rate": 0.001,
    },
    data_help="Churn_Modelling.csv, shipped as data/Churn_Modelling.csv",
)
