"""A trained run in the formats other runtimes read: ``digitlab export``.

ONNX is written from the run's own layer description (``inference.npz``, the NumPy runtime's
copy) with the ``onnx`` package: Keras 3's ``model.export(format="onnx")`` would need
TensorFlow and tf2onnx beside JAX (about 600 MB installed, against 31 MB for ``onnx``), and
the description already names every layer digitlab trains. Tests run every exported model in
onnxruntime against the run's own predictions on the 10,000 MNIST test digits.

The web export (``export_web``) writes the draw-a-digit page as a static folder, with the same
weights run by a small forward pass in JavaScript (``web/static/forward.js``), so it reads
digits with no server and no network, opened from ``file://`` or any static host.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path

import numpy as np

from digitlab import DigitlabError, artifacts, runtime
from digitlab.fileio import atomic_path, leftover_name, umask

FORMATS = ("onnx", "keras", "web")
ONNX_OPSET = 17  # read by onnxruntime >= 1.13 (Python, C#, Java, JS, mobile)
# The file format's version: the oldest that has opset 17. The onnx package writes its newest
# by default, which runtimes older than the package refuse (onnxruntime-web 1.30 did).
ONNX_IR_VERSION = 8
INPUT_NAME = "input"  # what `digitlab` feeds the model: pixels scaled to [0, 1]
OUTPUT_NAME = "probabilities"


def _onnx():
    try:
        import onnx
    except ImportError:
        raise DigitlabError(
            "exporting to ONNX needs the onnx package: pip install 'digitlab[export]'"
        ) from None
    return onnx


class _Graph:
    """The ONNX nodes and weights of one model, built layer by layer.

    Keras works channels-last (N, H, W, C); ONNX's Conv and pooling are channels-first. The
    image is transposed once before the first convolution and back before a Reshape, so that
    flattening keeps Keras' order and the weights need no reordering.
    """

    def __init__(self, onnx):
        self.onnx = onnx
        self.nodes, self.weights = [], []
        self.name = INPUT_NAME
        self.channels_first = False
        self.count = 0

    def add(self, op: str, inputs: list[str], **attributes) -> None:
        self.count += 1
        output = f"{op.lower()}_{self.count}"
        self.nodes.append(
            self.onnx.helper.make_node(op, [self.name, *inputs], [output], **attributes)
        )
        self.name = output

    def constant(self, array: np.ndarray, dtype=np.float32) -> str:
        name = f"weight_{len(self.weights)}"
        self.weights.append(self.onnx.numpy_helper.from_array(np.asarray(array, dtype), name))
        return name

    def layout(self, channels_first: bool) -> None:
        if self.channels_first != channels_first:
            self.add("Transpose", [], perm=[0, 3, 1, 2] if channels_first else [0, 2, 3, 1])
            self.channels_first = channels_first

    def activation(self, name: str) -> None:
        if name == "softmax":
            self.add("Softmax", [], axis=1 if self.channels_first else -1)
        elif name != "linear":
            self.add({"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh"}[name], [])


def _conv(graph: _Graph, spec: dict, weights: list, shape: tuple) -> None:
    kernel = weights[0]  # (kh, kw, C, F) -> ONNX's (F, C, kh, kw)
    pads = [0, 0, 0, 0]
    if spec["padding"] == "same":
        (top, bottom), (left, right) = (
            runtime._same_padding(shape[1 + axis], kernel.shape[axis], spec["strides"][axis])
            for axis in (0, 1)
        )
        pads = [top, left, bottom, right]
    graph.layout(channels_first=True)
    inputs = [graph.constant(kernel.transpose(3, 2, 0, 1))]
    if len(weights) > 1:
        inputs.append(graph.constant(weights[1]))
    graph.add(
        "Conv",
        inputs,
        kernel_shape=list(kernel.shape[:2]),
        strides=spec["strides"],
        pads=pads,
        group=spec.get("groups", 1),  # a reader of several members (models.reader_ensemble)
    )
    graph.activation(spec["activation"])


def _dense(graph: _Graph, spec: dict, weights: list, shape: tuple) -> None:
    graph.add("MatMul", [graph.constant(weights[0])])
    if len(weights) > 1:
        graph.add("Add", [graph.constant(weights[1])])
    graph.activation(spec["activation"])


def _batch_norm(graph: _Graph, spec: dict, weights: list, shape: tuple) -> None:
    weights = list(weights)
    channels = weights[-1].shape[0]
    gamma = weights.pop(0) if spec["scale"] else np.ones(channels)
    beta = weights.pop(0) if spec["center"] else np.zeros(channels)
    mean, variance = weights
    if len(shape) == 4:
        graph.layout(channels_first=True)  # ONNX normalises axis 1
    graph.add(
        "BatchNormalization",
        [
            graph.constant(gamma),
            graph.constant(beta),
            graph.constant(mean),
            graph.constant(variance),
        ],
        epsilon=float(spec["epsilon"]),
    )


def _reshape(graph: _Graph, spec: dict, weights: list, shape: tuple) -> None:
    graph.layout(channels_first=False)  # Keras flattens channels-last
    graph.add("Reshape", [graph.constant([-1, *spec["shape"]], np.int64)])


def _pooling(op: str) -> Callable:
    def convert(graph: _Graph, spec: dict, weights: list, shape: tuple) -> None:
        graph.layout(channels_first=True)
        graph.add(op, [], kernel_shape=spec["pool_size"], strides=spec["strides"])

    return convert


def _global_average_pool(graph: _Graph, spec: dict, weights: list, shape: tuple) -> None:
    graph.layout(channels_first=True)
    graph.add("GlobalAveragePool", [])
    graph.add("Flatten", [], axis=1)
    graph.channels_first = False  # (N, C): no image axes left


CONVERTERS: dict[str, Callable] = {
    "Identity": lambda graph, spec, weights, shape: None,
    "Dense": _dense,
    "Activation": lambda graph, spec, weights, shape: graph.activation(spec["activation"]),
    "Reshape": _reshape,
    "Conv2D": _conv,
    "BatchNormalization": _batch_norm,
    "MaxPooling2D": _pooling("MaxPool"),
    "AveragePooling2D": _pooling("AveragePool"),
    "GlobalAveragePooling2D": _global_average_pool,
}


def onnx_model(model: runtime.NumpyModel, input_shape: tuple[int, ...], name: str):
    """The ONNX model (an ``onnx.ModelProto``) of a NumPy-runtime model: input ``input``
    (N, *input_shape) float32 in [0, 1], output ``probabilities``; N is free."""
    onnx = _onnx()
    graph = _Graph(onnx)
    x = np.zeros((1, *input_shape), np.float32)  # run alongside, for each layer's input shape
    for kind, spec, weights in model.layers:
        if kind.name not in CONVERTERS:
            raise DigitlabError(f"cannot export a {kind.name} layer to ONNX")
        CONVERTERS[kind.name](graph, spec, weights, x.shape)
        x = kind.run(x, spec, weights)
    graph.layout(channels_first=False) if x.ndim == 4 else None
    graph.nodes[-1].output[0] = OUTPUT_NAME
    tensor = onnx.TensorProto.FLOAT
    made = onnx.helper.make_graph(
        graph.nodes,
        name,
        [onnx.helper.make_tensor_value_info(INPUT_NAME, tensor, ["N", *input_shape])],
        [onnx.helper.make_tensor_value_info(OUTPUT_NAME, tensor, ["N", *x.shape[1:]])],
        graph.weights,
    )
    exported = onnx.helper.make_model(
        made,
        producer_name="digitlab",
        opset_imports=[onnx.helper.make_opsetid("", ONNX_OPSET)],
        ir_version=ONNX_IR_VERSION,
    )
    onnx.checker.check_model(exported, full_check=True)
    return exported


def _numpy_model(run: Path, manifest: dict) -> runtime.NumpyModel:
    path = run / runtime.INFERENCE_FILE
    if not path.is_file():
        raise DigitlabError(
            f"{run} has no {runtime.INFERENCE_FILE} (a layer digitlab's runtime does not "
            "know): it can be exported as --format keras only"
        )
    return runtime.NumpyModel.load(path, tuple(manifest["input_shape"]))


def export_onnx(run: Path, destination: Path) -> Path:
    """Write the run's model as one ONNX file (with the run's manifest in its metadata)."""
    manifest = artifacts.read_manifest(run)
    exported = onnx_model(
        _numpy_model(run, manifest), tuple(manifest["input_shape"]), manifest["model"]
    )
    for key, value in _metadata(run, manifest).items():
        entry = exported.metadata_props.add()
        entry.key, entry.value = key, value
    with atomic_path(destination) as temporary:
        temporary.write_bytes(exported.SerializeToString())
    return destination


def _metadata(run: Path, manifest: dict) -> dict[str, str]:
    return {
        "digitlab_run": run.name,
        "model": manifest["model"],
        "reads": manifest.get("reads", "digit"),
        "input": "pixels scaled to [0, 1] after digitlab's preprocessing: "
        + ("(N, 28, 224, 1) number strips" if manifest.get("reads") == "number"
           else f"(N, {', '.join(map(str, manifest['input_shape']))}) MNIST-style digits"),
        "label_names": json.dumps(manifest["label_names"]),
        "test_accuracy": str(manifest.get("metrics", {}).get("test_accuracy")),
    }  # fmt: skip


def export_keras(run: Path, destination: Path) -> Path:
    """The run's Keras model file, as it was saved (``keras.saving.load_model`` reads it)."""
    with atomic_path(destination) as temporary:
        shutil.copyfile(run / artifacts.MODEL_FILE, temporary)
    return destination


def export_web(run: Path, destination: Path) -> Path:
    """The draw-a-digit page as a static folder that reads digits in the browser.

    The weights go into ``model.js`` (base64 float32 arrays with the layer description): a
    script, not a fetched file, so the page also works opened from ``file://``, where browsers
    refuse ``fetch``.
    """
    manifest = artifacts.read_manifest(run)
    if manifest.get("reads") == "number":
        raise DigitlabError(
            f"{run} is a number reader: the offline page runs a digit model (give a cnn or "
            "mlp run with --run)"
        )
    model = _numpy_model(run, manifest)
    layers = []
    for kind, spec, weights in model.layers:
        layers.append(
            {
                **{key: value for key, value in spec.items() if key != "weights"},
                "kind": kind.name,
                "weights": [
                    {"shape": list(w.shape), "data": base64.b64encode(w.tobytes()).decode()}
                    for w in weights
                ],
            }
        )
    description = {
        "model": manifest["model"],
        "run": run.name,
        "dataset": manifest.get("dataset"),
        "test_accuracy": manifest.get("metrics", {}).get("test_accuracy"),
        "input_shape": manifest["input_shape"],
        "label_names": manifest["label_names"],
        "rejection": manifest.get("rejection"),
        "layers": layers,
    }
    static = resources.files("digitlab") / "web" / "static"
    with _new_folder(destination) as folder:
        for name in OFFLINE_FILES:
            (folder / name).write_bytes((static / name).read_bytes())
        (folder / "index.html").write_bytes((static / "offline.html").read_bytes())
        (folder / "model.js").write_text(
            "// digitlab model for the offline page (made by `digitlab export --format web`)\n"
            f"globalThis.DIGITLAB_MODEL = {json.dumps(description)};\n"
        )
    return destination


@contextlib.contextmanager
def _new_folder(destination: Path) -> Iterator[Path]:
    """Build a folder under a temporary name; when complete, it takes ``destination``'s
    place in a rename (an earlier export there is swapped out first, then removed)."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    name = leftover_name(destination.name)
    built = Path(tempfile.mkdtemp(prefix=name, suffix=".tmp", dir=destination.parent))
    os.chmod(built, 0o777 & ~umask())
    try:
        yield built
        if destination.exists():
            old = Path(tempfile.mkdtemp(prefix=name, suffix=".old", dir=destination.parent))
            os.replace(destination, old)  # onto the empty folder just made
            os.rename(built, destination)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(built, destination)
    finally:
        if built.exists():
            shutil.rmtree(built, ignore_errors=True)


OFFLINE_FILES = ("style.css", "forward.js", "preprocess.js", "explain.js", "app.js")

EXPORTERS: dict[str, Callable[[Path, Path], Path]] = {
    "onnx": export_onnx,
    "keras": export_keras,
    "web": export_web,
}


def export(run: Path, format: str, destination: Path) -> Path:
    if format not in EXPORTERS:
        raise DigitlabError(f"unknown export format {format!r}: choose one of {', '.join(FORMATS)}")
    return EXPORTERS[format](run, destination)
