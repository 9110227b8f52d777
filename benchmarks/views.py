"""Test-time views of FER2013 faces: which set of views to average a trained net's answers over.

    MLFLOW_TRACKING_URI=... python benchmarks/views.py --model models:/<model id> [--data $DATA/fer2013.tar.gz]

Takes the net inside an `emotion_cnn_deep` logged model (the one it serves averaged over
views) and prints its PublicTest and PrivateTest accuracy alone, and averaged over each set
of views below: the face and its mirror, each as it is and moved by a few pixels (edge pixels
repeated). PublicTest chooses the set; PrivateTest is reported.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))
from experiments.emotion import load_fer2013  # noqa: E402  keras and TensorFlow load when first used
from experiments.views import mirror, shift  # noqa: E402

MOVES_1 = [(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)]
MOVES_2 = [(0, 0), (2, 0), (-2, 0), (0, 2), (0, -2)]
VIEW_SETS = {
    "the face and its mirror": [(0, 0)],
    "both, and each moved 1 pixel up, down, left and right": MOVES_1,
    "both, and each moved 2 pixels up, down, left and right": MOVES_2,
    "both, and each moved 2 pixels in 8 directions": [(dx, dy) for dx in (-2, 0, 2) for dy in (-2, 0, 2)],
}


def moved(images, right, down):
    """Images moved `right` and `down` pixels, edges repeated: the served model's own moves."""
    for axis, offset in ((0, down), (1, right)):
        if offset:
            images = shift(images.shape[1:], axis, offset, "view").predict(images, batch_size=1024, verbose=0)
    return images


def accuracy(net, images, labels, moves):
    mirrored = mirror(images.shape[1:]).predict(images, batch_size=1024, verbose=0)
    answers = [
        net.predict(moved(face, right, down), batch_size=1024, verbose=0)
        for face in (images, mirrored)
        for right, down in moves
    ]
    return float((np.mean(answers, axis=0).argmax(axis=1) == labels).mean())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a logged emotion_cnn_deep model's URI")
    parser.add_argument("--data", default=str(PROJECT.parent / "shared" / "data" / "fer2013.tar.gz"))
    args = parser.parse_args()
    import keras
    import mlflow

    served = mlflow.keras.load_model(args.model)
    (net,) = (layer for layer in served.layers if isinstance(layer, keras.Model) and layer.trainable_weights)
    splits = load_fer2013(args.data, seed=0)
    evaluated = {"PublicTest": (splits.x_val, splits.y_val), "PrivateTest": (splits.x_test, splits.y_test)}
    print("| Views | PublicTest | PrivateTest |\n|---|---|---|")
    alone = [(net.predict(x, batch_size=1024, verbose=0).argmax(axis=1) == y).mean() for x, y in evaluated.values()]
    print(f"| the face alone | {alone[0]:.4f} | {alone[1]:.4f} |")
    for name, moves in VIEW_SETS.items():
        scores = [accuracy(net, x.astype("float32"), y, moves) for x, y in evaluated.values()]
        print(f"| {name} | {scores[0]:.4f} | {scores[1]:.4f} |", flush=True)


if __name__ == "__main__":
    main()
