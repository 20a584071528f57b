"""``Predictor(model).predict(images)``: labels and probabilities for people's own images.

Every image goes through ``preprocess`` (the same steps the CLI and the web service use). A run
folder with ``inference.npz`` predicts with NumPy alone (fast start-up, low latency); otherwise
the Keras model is loaded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from digitlab import DigitlabError, artifacts, preprocess, runtime

BATCH_SIZE = 256  # digits per model call when predicting many images


@dataclass
class Prediction:
    label: int
    confidence: float
    probabilities: list[float]
    input: np.ndarray  # (28, 28) uint8: what the model saw
    label_name: str = ""

    def to_dict(self) -> dict:
        return {
            "label": self.label,
            "confidence": self.confidence,
            "probabilities": self.probabilities,
        }


@dataclass
class NumberPrediction:
    text: str
    digits: list[Prediction] = field(default_factory=list)

    @property
    def confidence(self) -> float:
        """The chance that every digit is right, if the digits' errors are independent."""
        return float(np.prod([digit.confidence for digit in self.digits]))


class Predictor:
    """A trained model plus the preprocessing it expects."""

    def __init__(
        self,
        forward: Callable[[np.ndarray], np.ndarray],
        input_shape: tuple[int, ...],
        label_names: Iterable[str] = tuple(str(d) for d in range(10)),
        manifest: dict | None = None,
    ):
        self.forward = forward  # (N, *input_shape) float32 -> (N, 10) probabilities
        self.input_shape = tuple(input_shape)
        self.label_names = list(label_names)
        self.manifest = manifest or {}

    @classmethod
    def from_run(cls, run: Path | None = None, use_keras: bool = False) -> Predictor:
        """The model of a run folder (default ``runs/latest``)."""
        folder = artifacts.resolve_run(run)
        manifest = artifacts.read_manifest(folder)
        numpy_model = folder / runtime.INFERENCE_FILE
        if numpy_model.is_file() and not use_keras:
            try:
                forward = runtime.NumpyModel.load(numpy_model)
            except (OSError, ValueError, KeyError) as error:
                raise DigitlabError(f"cannot load {numpy_model}: {error}") from None
        else:
            keras_model = artifacts.load_run(folder).model
            forward = keras_model.predict_on_batch
        return cls(forward, manifest["input_shape"], manifest["label_names"], manifest)

    def predict_digits(self, digits: np.ndarray) -> np.ndarray:
        """(N, 28, 28) uint8 MNIST-style digits -> (N, 10) probabilities."""
        from digitlab.models import prepare

        digits = np.asarray(digits)
        if len(digits) == 0:
            return np.zeros((0, len(self.label_names)), dtype=np.float32)
        batches = [
            np.asarray(self.forward(prepare(digits[start : start + BATCH_SIZE], self.input_shape)))
            for start in range(0, len(digits), BATCH_SIZE)
        ]
        return np.concatenate(batches).astype(np.float64)

    def result_for(self, digit: np.ndarray, probabilities: np.ndarray) -> Prediction:
        label = int(np.argmax(probabilities))
        return Prediction(
            label=label,
            confidence=float(probabilities[label]),
            probabilities=[round(float(p), 6) for p in probabilities],
            input=digit,
            label_name=self.label_names[label],
        )

    def predict(self, images: Iterable) -> list[Prediction]:
        """Paths, image bytes, PIL images or arrays -> one Prediction each.

        Raises ImageError (or EmptyImageError) for the first image that cannot be read.
        """
        digits = [preprocess.prepare_image(image) for image in images]
        probabilities = self.predict_digits(np.stack(digits) if digits else np.zeros((0, 28, 28)))
        return [self.result_for(d, p) for d, p in zip(digits, probabilities, strict=True)]

    def predict_number(self, image) -> NumberPrediction:
        """An image of a written number (digits side by side) -> its text and each digit."""
        digits = [digit.image for digit in preprocess.prepare_number(image)]
        probabilities = self.predict_digits(np.stack(digits))
        results = [self.result_for(d, p) for d, p in zip(digits, probabilities, strict=True)]
        return NumberPrediction("".join(r.label_name for r in results), results)
