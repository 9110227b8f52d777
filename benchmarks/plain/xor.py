"""The tutorial's XOR as a plain Keras script: the baseline `mlflow run . -e xor` is timed against.

Same data, model, optimizer, batch size and epochs as the `xor` entry point, and no tracking.
"""

import keras
import numpy as np

EPOCHS = 500
INPUTS = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype="float32")
TARGETS = np.array([0, 1, 1, 0], dtype="float32")

keras.utils.set_random_seed(42)
model = keras.Sequential(
    [
        keras.Input(shape=(2,)),
        keras.layers.Dense(8, activation="relu"),
        keras.layers.Dense(4, activation="relu"),
        keras.layers.Dense(1, activation="sigmoid"),
    ]
)
model.compile(optimizer=keras.optimizers.Adam(0.01), loss="binary_crossentropy", metrics=["accuracy"])
model.fit(INPUTS, TARGETS, epochs=EPOCHS, batch_size=1, verbose=0)
loss, accuracy = model.evaluate(INPUTS, TARGETS, verbose=0)
print(f"accuracy {accuracy:.4f}")
