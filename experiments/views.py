"""Fixed views of images for test-time augmentation: moved and mirrored copies, made of
built-in Keras layers so that a logged model that averages its answers over them loads
without our code."""

import lazy_loader as lazy
import numpy as np

keras = lazy.load("keras")  # imported when a view is built


def pixel_map(image_shape, axis, source, name):
    """A fixed rearrangement of pixels along one image axis (0: rows, 1: columns): output
    pixel j is input pixel source[j]. Made of built-in layers so that the logged model loads
    without our code: the axis moved last, multiplied by a 0/1 matrix (exact: each output
    pixel is one input pixel times 1), and moved back."""
    size = image_shape[axis]
    matrix = np.zeros((size, size), dtype="float32")
    matrix[source, np.arange(size)] = 1
    order = (3, 2, 1) if axis == 0 else (1, 3, 2)  # each its own inverse
    rearrange = keras.layers.Dense(size, use_bias=False, trainable=False, name=f"{name}_matrix")
    mapped = keras.Sequential(
        [keras.Input(shape=image_shape), keras.layers.Permute(order), rearrange, keras.layers.Permute(order)],
        name=name,
    )
    rearrange.set_weights([matrix])
    return mapped


def mirror(image_shape):
    """Images flipped left to right."""
    return pixel_map(image_shape, 1, np.arange(image_shape[1])[::-1], "mirror")


def shift(image_shape, axis, offset, name):
    """Images moved `offset` pixels along `axis` (down or right when positive), the edge
    pixels repeated into the gap."""
    size = image_shape[axis]
    return pixel_map(image_shape, axis, np.clip(np.arange(size) - offset, 0, size - 1), name)


def moved(image_shape, down, right, name):
    """Images moved `down` and `right` pixels (up or left when negative), edges repeated."""
    layers = [shift(image_shape, axis, offset, f"{name}_{axis}") for axis, offset in ((0, down), (1, right)) if offset]
    return keras.Sequential([keras.Input(shape=image_shape), *layers], name=name)
