"""A NumPy copy of a trained model's forward pass, for fast start-up and single-image latency.

Importing Keras with JAX takes 2.5-4 s here and a single ``predict`` call about a millisecond of
overhead; reading one digit should take neither. At training time ``export`` writes each layer's
kind, settings and weights to ``inference.npz``; ``NumpyModel`` runs them with NumPy only. Tests
check it against Keras' own output on the same inputs.

``LAYER_KINDS`` is the one table of what the runtime knows: per Keras layer class, how to
describe it (``describe``) and how to run that description (``run``). A layer it does not know
makes ``export`` return None (digitlab then predicts with Keras); a description naming a kind
it does not know is an error when it is loaded, never a silent identity. ``inference.npz`` is
untrusted input: its description is checked and only the arrays it names are read, each within
a size limit.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from digitlab import DigitlabError

if TYPE_CHECKING:
    import keras

INFERENCE_FILE = "inference.npz"
MAX_ARRAY_BYTES = 64 * 2**20  # per weight array; the CNN's largest is 1.6 MB
MAX_TOTAL_BYTES = 256 * 2**20  # all weights of one model
MAX_LAYERS = 256
MAX_SPEC_BYTES = 2**20


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


@dataclass(frozen=True)
class LayerKind:
    """One kind of layer the runtime runs.

    ``describe(layer, config)`` -> the settings to store (a dict), or None when this layer's
    settings are beyond what ``run`` does; ``run(x, spec, weights)`` -> the layer's output.
    """

    name: str
    keras_classes: tuple[str, ...]
    describe: Callable[[object, dict], dict | None]
    run: Callable[[np.ndarray, dict, list[np.ndarray]], np.ndarray]


LAYER_KINDS: dict[str, LayerKind] = {}  # by our kind name
_BY_KERAS_CLASS: dict[str, LayerKind] = {}


def layer_kind(name: str, *keras_classes: str):
    """Register ``run`` (the decorated function) with its ``describe`` as a layer kind."""

    def register(describe):
        def decorator(run):
            kind = LayerKind(name, keras_classes, describe, run)
            LAYER_KINDS[name] = kind
            for keras_class in keras_classes:
                _BY_KERAS_CLASS[keras_class] = kind
            return run

        return decorator

    return register


def _activation_of(config: dict) -> dict | None:
    activation = config.get("activation", "linear")
    return {"activation": activation} if activation in ACTIVATIONS else None


# Layers that do nothing at inference time (augmentation, dropout, the input marker).
@layer_kind(
    "Identity",
    "InputLayer",
    "Dropout",
    "RandomTranslation",
    "RandomRotation",
    "RandomZoom",
    "SpatialDropout2D",
    "GaussianNoise",
)(lambda layer, config: {})
def _identity(x, spec, weights):
    return x


@layer_kind("Dense", "Dense")(lambda layer, config: _activation_of(config))
def _dense(x, spec, weights):
    x = x @ weights[0] + (weights[1] if len(weights) > 1 else 0.0)
    return ACTIVATIONS[spec["activation"]](x)


def _describe_activation(layer, config: dict) -> dict | None:
    if type(layer).__name__ == "ReLU":
        plain = (
            config.get("max_value") is None
            and not config.get("negative_slope")
            and not config.get("threshold")
        )
        return {"activation": "relu"} if plain else None
    return _activation_of(config)


@layer_kind("Activation", "Activation", "ReLU")(_describe_activation)
def _activation(x, spec, weights):
    return ACTIVATIONS[spec["activation"]](x)


@layer_kind("Reshape", "Flatten", "Reshape")(
    lambda layer, config: {"shape": [int(d) for d in layer.output.shape[1:]]}
)
def _reshape(x, spec, weights):
    return x.reshape((x.shape[0], *spec["shape"]))


def _describe_conv(layer, config: dict) -> dict | None:
    if (
        config["activation"] not in ACTIVATIONS
        or config["data_format"] != "channels_last"
        or tuple(config["dilation_rate"]) != (1, 1)
    ):
        return None
    groups = config.get("groups", 1)
    return {
        "activation": config["activation"],
        "strides": list(config["strides"]),
        "padding": config["padding"],
        **({"groups": groups} if groups != 1 else {}),
    }


@layer_kind("Conv2D", "Conv2D")(_describe_conv)
def _conv(x, spec, weights):
    groups = spec.get("groups", 1)
    if groups == 1:
        x = _conv2d(x, weights[0], spec["strides"], spec["padding"])  # a new array: add in place
    else:  # channels and filters in ``groups`` blocks, each block of filters seeing its own
        x = np.concatenate(
            [
                _conv2d(part, kernel, spec["strides"], spec["padding"])
                for part, kernel in zip(
                    np.split(x, groups, axis=-1), np.split(weights[0], groups, axis=-1), strict=True
                )
            ],
            axis=-1,
        )
    if len(weights) > 1:
        x += weights[1]
    return ACTIVATIONS[spec["activation"]](x)


def _describe_batch_norm(layer, config: dict) -> dict | None:
    if config["axis"] not in (-1, [-1]):
        return None
    return {"epsilon": config["epsilon"], "center": config["center"], "scale": config["scale"]}


@layer_kind("BatchNormalization", "BatchNormalization")(_describe_batch_norm)
def _batch_norm(x, spec, weights):
    weights = list(weights)
    gamma = weights.pop(0) if spec["scale"] else 1.0
    beta = weights.pop(0) if spec["center"] else 0.0
    mean, variance = weights
    scale = gamma / np.sqrt(variance + spec["epsilon"])  # per channel: two passes over x, not four
    return x * scale + (beta - mean * scale)


def _describe_pooling(layer, config: dict) -> dict | None:
    if config["padding"] != "valid" or config["data_format"] != "channels_last":
        return None
    return {
        "pool_size": list(config["pool_size"]),
        "strides": list(config["strides"] or config["pool_size"]),
    }


@layer_kind("MaxPooling2D", "MaxPooling2D")(_describe_pooling)
def _max_pool(x, spec, weights):
    return _windows(x, spec["pool_size"], spec["strides"]).max(axis=(4, 5))


@layer_kind("AveragePooling2D", "AveragePooling2D")(_describe_pooling)
def _average_pool(x, spec, weights):
    return _windows(x, spec["pool_size"], spec["strides"]).mean(axis=(4, 5))


@layer_kind("GlobalAveragePooling2D", "GlobalAveragePooling2D")(
    lambda layer, config: {} if config["data_format"] == "channels_last" else None
)
def _global_average_pool(x, spec, weights):
    return x.mean(axis=(1, 2))


# ------------------------------------------------------------------------------ the arithmetic


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's "same" padding, which Keras uses on every backend: the extra pixel after."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _windows(x: np.ndarray, size, strides) -> np.ndarray:
    """(N, H, W, C) -> (N, H', W', C, kh, kw): every window, as a view (nothing copied)."""
    view = np.lib.stride_tricks.sliding_window_view(x, tuple(size), axis=(1, 2))
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


# ------------------------------------------------------------------------- export and load


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
        kind = _BY_KERAS_CLASS.get(type(layer).__name__)
        settings = kind.describe(layer, layer.get_config()) if kind else None
        if settings is None:
            return None
        weights = layer.get_weights()
        for position, weight in enumerate(weights):
            arrays[f"{index}/{position}"] = np.asarray(weight, dtype=np.float32)
        specs.append({"kind": kind.name, **settings, "weights": len(weights)})
    arrays["spec"] = np.array(json.dumps(specs))
    return arrays


class NumpyModel:
    """Runs an exported model: ``NumpyModel.load(path)(inputs) -> probabilities``."""

    def __init__(self, specs: list[dict], weights: dict[str, np.ndarray]):
        self.layers: list[tuple[LayerKind, dict, list[np.ndarray]]] = []
        for index, spec in enumerate(specs):
            kind = LAYER_KINDS.get(spec.get("kind")) if isinstance(spec, dict) else None
            if kind is None:
                raise ValueError(f"layer {index}: unknown layer kind {_shown(spec)}")
            count = spec.get("weights", 0)
            if not isinstance(count, int) or not 0 <= count <= 8:
                raise ValueError(f"layer {index}: bad weight count")
            names = [f"{index}/{position}" for position in range(count)]
            missing = [name for name in names if name not in weights]
            if missing:
                raise ValueError(f"layer {index}: array {missing[0]} is missing")
            self.layers.append((kind, spec, [weights[name] for name in names]))

    @classmethod
    def load(cls, path: Path, input_shape: tuple[int, ...] | None = None) -> NumpyModel:
        """Read ``inference.npz``: the description, then only the arrays it names; with
        ``input_shape``, run one blank input through it to check the layers fit together.

        Raises DigitlabError naming the file for anything damaged, crafted or too large.
        """
        try:
            with zipfile.ZipFile(path) as archive, np.load(path, allow_pickle=False) as stored:
                sizes = {
                    info.filename.removesuffix(".npy"): info.file_size
                    for info in archive.infolist()
                }
                if sizes.get("spec", MAX_SPEC_BYTES + 1) > MAX_SPEC_BYTES:
                    raise ValueError("no model description (spec) of a sensible size")
                specs = json.loads(str(stored["spec"]))
                if not isinstance(specs, list) or not 0 < len(specs) <= MAX_LAYERS:
                    raise ValueError("the model description is not a list of layers")
                wanted = [
                    f"{index}/{position}"
                    for index, spec in enumerate(specs)
                    if isinstance(spec, dict) and isinstance(spec.get("weights"), int)
                    for position in range(min(max(spec["weights"], 0), 8))
                ]
                if any(sizes.get(name, 0) > MAX_ARRAY_BYTES for name in wanted):
                    raise ValueError(f"a weight array is over {MAX_ARRAY_BYTES // 2**20} MiB")
                if sum(sizes.get(name, 0) for name in wanted) > MAX_TOTAL_BYTES:
                    raise ValueError(f"the weights are over {MAX_TOTAL_BYTES // 2**20} MiB")
                weights = {
                    name: np.asarray(stored[name], dtype=np.float32)
                    for name in wanted
                    if name in sizes
                }
            model = cls(specs, weights)
            if input_shape is not None:
                model.check(input_shape)
            return model
        except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, RecursionError) as e:
            reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
            raise DigitlabError(
                f"cannot load {path}: damaged or not a digitlab model ({reason})"
            ) from None

    def check(self, input_shape: tuple[int, ...]) -> None:
        """Run one blank input through every layer: a bad setting or weight shape fails here,
        at load time, not on a user's first image."""
        try:
            with np.errstate(all="ignore"):
                output = self(np.zeros((1, *input_shape), dtype=np.float32))
        except Exception as error:  # any failure here means a malformed description
            raise ValueError(f"the layers do not fit together ({type(error).__name__})") from None
        if output.ndim not in (2, 3) or output.shape[0] != 1:
            raise ValueError(
                f"the model's output has shape {output.shape[1:]}, not (classes,) or "
                "(steps, classes)"
            )

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        x = np.asarray(inputs, dtype=np.float32)
        for kind, spec, weights in self.layers:
            x = kind.run(x, spec, weights)
        return x


def _shown(value) -> str:
    text = json.dumps(value.get("kind") if isinstance(value, dict) else value)
    return text if len(text) <= 40 else text[:37] + "..."
