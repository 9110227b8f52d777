"""Figures, held-out metrics and their intervals computed from a trained model: pure functions, no MLflow."""

import matplotlib

matplotlib.use("Agg")  # headless: figures are files, never windows

import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import (
    ConfusionMatrixDisplay,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from pipelines import schema, significance

BINARY_THRESHOLD = 0.5


def learning_curves(history):
    """Train vs validation curves for loss and, where tracked, accuracy: the tutorial's graphs."""
    metrics = [name for name in ("accuracy", "loss") if name in history]
    figure, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4), squeeze=False)
    epochs = np.arange(1, len(history["loss"]) + 1)
    for axis, metric in zip(axes[0], metrics, strict=True):
        axis.plot(epochs, history[metric], label="train")
        if f"val_{metric}" in history:
            axis.plot(epochs, history[f"val_{metric}"], label="validation")
        axis.set(title=metric, xlabel="epoch", ylabel=metric)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    return figure


def predicted_labels(kind, outputs):
    if kind == "binary":
        return (outputs[:, 0] > BINARY_THRESHOLD).astype("int64")
    return outputs.argmax(axis=1)


def classification_metrics(kind, y_true, outputs, class_names):
    """Test metrics beyond Keras' loss and accuracy: ROC AUC, precision, recall, F1."""
    y_true = np.asarray(y_true).astype("int64")
    y_pred = predicted_labels(kind, outputs)
    if kind == "binary":
        return {
            "test_roc_auc": float(roc_auc_score(y_true, outputs[:, 0])) if len(set(y_true)) == 2 else float("nan"),
            "test_precision": float(precision_score(y_true, y_pred, zero_division=0)),
            "test_recall": float(recall_score(y_true, y_pred, zero_division=0)),
            "test_f1": float(f1_score(y_true, y_pred, zero_division=0)),
        }
    # A class without test examples has no recall: it is left out rather than reported as 0,
    # and the macro F1 averages the classes that have examples.
    present = np.flatnonzero(np.bincount(y_true, minlength=len(class_names)))
    recalls = recall_score(y_true, y_pred, labels=present, average=None, zero_division=0)
    return {
        "test_macro_f1": float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
        **{
            schema.CLASS_RECALL_PREFIX + class_names[label]: float(recall)
            for label, recall in zip(present, recalls, strict=True)
        },
    }


def interval_metrics(kind, y_true, outputs):
    """The 95% interval of the headline test metric: Wilson's for a classifier's accuracy,
    a bootstrap over the test examples for a regression's MSE."""
    low, high = significance.interval_of(kind, *prediction_arrays(kind, y_true, outputs))
    metric = "test_mse" if kind == "regression" else "test_accuracy"
    return dict(zip(schema.interval_metric_names(metric), (low, high), strict=True))


def prediction_arrays(kind, y_true, outputs):
    """(truth, predicted) per test example, as compact as pairing needs: class labels for a
    classifier (bytes when there are few classes), float32 values for a regression."""
    if kind == "regression":
        return np.reshape(y_true, -1).astype("float32"), np.reshape(outputs, -1).astype("float32")
    labels = np.reshape(y_true, -1).astype("int64")
    predicted = predicted_labels(kind, outputs)
    dtype = "uint8" if max(labels.max(initial=0), predicted.max(initial=0)) < 256 else "int32"
    return labels.astype(dtype), predicted.astype(dtype)


def write_predictions(path, kind, y_true, outputs, test_digest):
    """The test split's truth and predictions, with the split's digest, as a compressed npz."""
    truth, predicted = prediction_arrays(kind, y_true, outputs)
    np.savez_compressed(path, truth=truth, predicted=predicted, kind=np.array(kind), test_digest=np.array(test_digest))


def read_predictions(path):
    """{truth, predicted, kind, test_digest} from `write_predictions`' file."""
    with np.load(path, allow_pickle=False) as arrays:
        return {
            "truth": arrays["truth"],
            "predicted": arrays["predicted"],
            "kind": str(arrays["kind"]),
            "test_digest": str(arrays["test_digest"]),
        }


def confusion(kind, y_true, outputs, class_names):
    return confusion_matrix(
        np.asarray(y_true).astype("int64"),
        predicted_labels(kind, outputs),
        labels=np.arange(len(class_names)),
    )


def confusion_figure(matrix, class_names):
    size = max(4.5, 0.6 * len(class_names) + 2)
    figure, axis = plt.subplots(figsize=(size, size))
    draw_confusion(axis, matrix, class_names, "test split")
    figure.tight_layout()
    return figure


def draw_confusion(axis, matrix, class_names, title):
    ConfusionMatrixDisplay(np.asarray(matrix), display_labels=class_names).plot(
        ax=axis, cmap="Blues", colorbar=False, xticks_rotation=45
    )
    axis.set_title(title)
