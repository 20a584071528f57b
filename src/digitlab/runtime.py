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
    if kind == "ReLU":
        plain = (
            config.get("max_value") is None
            and not config.get("negative_slope")
            and not config.get("threshold")
        )
        return {"kind": "Activation", "activation": "relu"} if plain else None
    if kind == "Conv2D":
        if (
            config["activation"] not in ACTIVATIONS
            or config["data_format"] != "channels_last"
            or tuple(config["dilation_rate"]) != (1, 1)
            or config.get("groups", 1) != 1
        ):
            return None
        return {
            "kind": "Conv2D",
            "activation": config["activation"],
            "strides": list(config["strides"]),
            "padding": config["padding"],
        }
    if kind == "BatchNormalization":
        if config["axis"] not in (-1, [-1]):
            return None
        return {
            "kind": "BatchNormalization",
            "epsilon": config["epsilon"],
            "center": config["center"],
            "scale": config["scale"],
        }
    if kind in ("MaxPooling2D", "AveragePooling2D"):
        if config["padding"] != "valid" or config["data_format"] != "channels_last":
            return None
        return {
            "kind": kind,
            "pool_size": list(config["pool_size"]),
            "strides": list(config["strides"] or config["pool_size"]),
        }
    if kind == "GlobalAveragePooling2D" and config["data_format"] == "channels_last":
        return {"kind": kind}
    return None


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's "same" padding, which Keras uses on every backend: the extra pixel after."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _windows(x: np.ndarray, size: tuple[int, int], strides: tuple[int, int]) -> np.ndarray:
    """(N, H, W, C) -> (N, H', W', C, kh, kw): every window, as a view (nothing copied)."""
    view = np.lib.stride_tricks.sliding_window_view(x, size, axis=(1, 2))
    return view[:, :: strides[0], :: strides[1]]


def _conv2d(x: np.ndarray, kernel: np.ndarray, strides, padding: str) -> np.ndarray:
    height, width, channels, filters = kernel.shape  # Keras' kernel layout
    if padding == "same":
        x = np.pad(
            x,
            (
                (0, 0),
                _same_padding(x.shape[1], height, strides[0]),
                _same_padding(x.shape[2], width, strides[1]),
                (0, 0),
            ),
        )
    windows = _windows(x, (height, width), strides)  # (N, H', W', C, kh, kw)
    # as one matrix product: (N*H'*W', kh*kw*C) @ (kh*kw*C, F)
    columns = windows.transpose(0, 1, 2, 4, 5, 3).reshape(-1, height * width * channels)
    out = columns @ kernel.reshape(-1, filters)
    return out.reshape(*windows.shape[:3], filters)


def export(model: keras.Model) -> dict[str, np.ndarray] | None:
    """The arrays of ``inference.npz`` for ``model``, or None if it cannot be run in NumPy.

    Only a ``keras.Sequential`` model: its layers run one after the other, which is all this
    runtime does (a functional model may branch).
    """
    import keras

    if not isinstance(model, keras.Sequential):
        return None
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
            if kind == "Conv2D":
                x = _conv2d(x, weights[0], spec["strides"], spec["padding"])
                x = ACTIVATIONS[spec["activation"]](x + (weights[1] if len(weights) > 1 else 0))
            elif kind == "BatchNormalization":
                weights = list(weights)
                gamma = weights.pop(0) if spec["scale"] else 1.0
                beta = weights.pop(0) if spec["center"] else 0.0
                mean, variance = weights
                x = (x - mean) / np.sqrt(variance + spec["epsilon"]) * gamma + beta
            elif kind == "MaxPooling2D":
                x = _windows(x, spec["pool_size"], spec["strides"]).max(axis=(4, 5))
            elif kind == "AveragePooling2D":
                x = _windows(x, spec["pool_size"], spec["strides"]).mean(axis=(4, 5))
            elif kind == "GlobalAveragePooling2D":
                x = x.mean(axis=(1, 2))
            elif kind == "Dense":
                x = x @ weights[0] + (weights[1] if len(weights) > 1 else 0.0)
                x = ACTIVATIONS[spec["activation"]](x)
            elif kind == "Activation":
                x = ACTIVATIONS[spec["activation"]](x)
            elif kind == "Reshape":
                x = x.reshape((x.shape[0], *spec["shape"]))
        return x
