"""What a served image model takes: float32 pixels, 0-255 or 0-1, each image read on its own.

Training reads 0-1 images back to 0-255 (experiments/mnist.py `pixels`), and the models
rescale 0-255 themselves. A served model takes both scales the same way, per image: an image
whose largest value is at most 1 is read as 0-1. A request outside both ranges (standardized
pixels, NaN) is refused with a message (HTTP 400 from `mlflow models serve`) rather than
answered with confidence. The model's pyfunc loads through this module, which is logged with
it (its `code` folder), so it imports nothing of the project.
"""

import numpy as np
from mlflow.exceptions import INVALID_PARAMETER_VALUE, MlflowException
from mlflow.keras.load import _load_pyfunc as _load_keras_pyfunc

MAX_PIXEL = 255
CONTRACT = "float32 pixels 0-255, or 0-1 (an image whose largest value is at most 1)"


def as_pixels(images):
    """`images` (n, ...) as 0-255 float32 pixels; MlflowException when they are neither scale."""
    images = np.asarray(images, dtype="float32")
    if not np.isfinite(images).all():
        raise _refused("the images hold NaN or infinite values")
    if images.size and (images.min() < 0 or images.max() > MAX_PIXEL):
        raise _refused(f"the images hold values from {images.min():g} to {images.max():g}")
    if images.ndim < 2:
        return images
    largest = images.reshape(len(images), -1).max(axis=1, initial=0)
    scale = np.where(largest <= 1, MAX_PIXEL, 1).astype("float32")
    return images * scale.reshape(-1, *([1] * (images.ndim - 1)))


def _refused(what):
    return MlflowException(f"{what}; the model takes {CONTRACT}", INVALID_PARAMETER_VALUE)


class PixelModel:
    """A Keras model as MLflow's pyfunc serves it, given its images as 0-255 pixels."""

    def __init__(self, keras_model):
        self.keras_model = keras_model

    def get_raw_model(self):
        return self.keras_model

    def predict(self, data, params=None):
        return self.keras_model.predict(as_pixels(data), verbose=0)  # no progress bar per request


def _load_pyfunc(path):
    """`mlflow.pyfunc.load_model`'s entry into a model logged with this module as its loader."""
    return PixelModel(_load_keras_pyfunc(path).get_raw_model())
