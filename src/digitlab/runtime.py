"""A NumPy copy of a trained model's forward pass, for fast start-up and single-image latency.

Importing Keras with JAX takes 2.5-4 s here and a single ``predict`` call about a millisecond of
overhead; reading one digit should take neither. At training time ``export`` writes each layer's
kind, settings and weights to ``inference.npz``; ``NumpyModel`` runs them with NumPy only. Tests
check it against Keras' own output on the same inputs. A layer it does not know makes ``export``
return None, and digitlab then predicts with Keras.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import keras

INFERENCE_FILE = "inference.npz"
# Layers that do nothing at inference time (augmentation, dropout, the input marker).
IDENTITY_LAYERS = {
    "InputLayer",
    "Dropout",
    "RandomTranslation",
    "RandomRotation",
    "RandomZoom",
    "SpatialDropout2D",
    "GaussianNoise",
}


def _softmax(x: np.ndarray) -> np.ndarray:
    shifted = np.exp(x - x.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


ACTIVATIONS = {
    "linear": lambda x: x,
    "relu": lambda x: np.maximum(x, 0),
    "softmax": _softmax,
    "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
    "tanh": np.tanh,
}


def _layer_spec(layer) -> dict | None:
    kind = type(layer).__name__
    config = layer.get_config()
    if kind in IDENTITY_LAYERS:
        return {"kind": "Identity"}
    if kind in ("Dense", "Activation"):
        if config["activation"] not in ACTIVATIONS:
            return None
        return {"kind": kind, "activation": config["activation"]}
    if kind in ("Flatten", "Reshape"):
        return {"kind": "Reshape", "shape": [int(d) for d in layer.output.shape[1:]]}
    return None


def export(model: keras.Model) -> dict[str, np.ndarray] | None:
    """The arrays of ``inference.npz`` for ``model``, or None if a layer is not supported."""
    specs, arrays = [], {}
    for index, layer in enumerate(model.layers):
        spec = _layer_spec(layer)
        if spec is None:
            return None
        for position, weight in enumerate(layer.get_weights()):
            arrays[f"{index}/{position}"] = np.asarray(weight, dtype=np.float32)
        spec["weights"] = len(layer.get_weights())
        specs.append(spec)
    arrays["spec"] = np.array(json.dumps(specs))
    return arrays


class NumpyModel:
    """Runs an exported model: ``NumpyModel.load(path)(inputs) -> probabilities``."""

    def __init__(self, specs: list[dict], weights: dict[str, np.ndarray]):
        self.layers = []
        for index, spec in enumerate(specs):
            layer_weights = [weights[f"{index}/{position}"] for position in range(spec["weights"])]
            self.layers.append((spec, layer_weights))

    @classmethod
    def load(cls, path: Path) -> NumpyModel:
        with np.load(path, allow_pickle=False) as stored:
            specs = json.loads(str(stored["spec"]))
            weights = {key: stored[key] for key in stored.files if key != "spec"}
        return cls(specs, weights)

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        x = np.asarray(inputs, dtype=np.float32)
        for spec, weights in self.layers:
            kind = spec["kind"]
            if kind == "Dense":
                x = x @ weights[0] + (weights[1] if len(weights) > 1 else 0.0)
                x = ACTIVATIONS[spec["activation"]](x)
            elif kind == "Activation":
                x = ACTIVATIONS[spec["activation"]](x)
            elif kind == "Reshape":
                x = x.reshape((x.shape[0], *spec["shape"]))
        return x
