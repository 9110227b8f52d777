"""Figures and held-out metrics computed from a trained model: pure functions, no MLflow."""

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
    labels = np.arange(len(class_names))
    recalls = recall_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    return {
        "test_macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        **{f"test_recall_{name}": float(recall) for name, recall in zip(class_names, recalls, strict=True)},
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
