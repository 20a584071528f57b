"""``Predictor(model).predict(images)``: labels and probabilities for people's own images.

Every image goes through ``preprocess`` (the same steps the CLI and the web service use). A run
folder with ``inference.npz`` predicts with NumPy alone (fast start-up, low latency); otherwise
the Keras model is loaded. ``predict_many`` is the one place where many images are read, each
failing only itself; ``to_dict`` is the one JSON shape of each answer, for the CLI and the API
alike (``schemas.DigitAnswer`` and ``schemas.NumberAnswer`` are that shape as a schema).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from digitlab import artifacts, preprocess, runtime
from digitlab.config import DIGIT_LABELS, IMAGE_SIDE
from digitlab.preprocess import ImageError

BATCH_SIZE = 256  # digits per model call when predicting many images
CHUNK = 2048  # images prepared at once by predict_many: bounds memory on huge folders


def png_base64(image: np.ndarray) -> str:
    """A uint8 image as base64 PNG, for JSON answers that show what the model saw."""
    from PIL import Image

    buffer = io.BytesIO()
    # compress_level 1: a 28x28 PNG is tiny either way, and level 6 takes twice as long
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buffer, format="PNG", compress_level=1)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


@dataclass
class Prediction:
    label: int
    confidence: float
    probabilities: list[float]
    input: np.ndarray  # (28, 28) uint8: what the model saw
    label_name: str = ""

    def to_dict(self, with_input: bool = False) -> dict:
        answer = {
            "label": self.label,
            "label_name": self.label_name,
            "confidence": self.confidence,
            "probabilities": self.probabilities,
        }
        if with_input:
            answer["input_png"] = png_base64(self.input)
        return answer


@dataclass
class NumberPrediction:
    text: str
    digits: list[Prediction] = field(default_factory=list)

    @property
    def confidence(self) -> float:
        """The chance that every digit is right, if the digits' errors are independent."""
        return float(np.prod([digit.confidence for digit in self.digits]))

    def to_dict(self, with_input: bool = False) -> dict:
        answer = {
            "text": self.text,
            "confidence": self.confidence,
            "digits": [digit.to_dict(with_input) for digit in self.digits],
        }
        if with_input:  # the digits side by side: a wrong reading of any length can be shown
            answer["input_png"] = png_base64(np.hstack([d.input for d in self.digits]))
        return answer


Answer = Prediction | NumberPrediction


class Predictor:
    """A trained model plus the preprocessing it expects."""

    def __init__(
        self,
        forward: Callable[[np.ndarray], np.ndarray],
        input_shape: tuple[int, ...],
        label_names: Iterable[str] = DIGIT_LABELS,
        manifest: dict | None = None,
        folder: Path | None = None,
    ):
        self.forward = forward  # (N, *input_shape) float32 -> (N, 10) probabilities
        self.input_shape = tuple(input_shape)
        self.label_names = list(label_names)
        self.manifest = manifest or {}
        self.folder = folder  # the run folder it came from, if any

    @classmethod
    def from_run(cls, run: Path | None = None, use_keras: bool = False) -> Predictor:
        """The model of a run folder (default ``runs/latest``): its NumPy copy when it has
        one, else (or with ``use_keras``) the Keras model."""
        folder = artifacts.resolve_run(run)
        manifest = artifacts.read_manifest(folder)
        input_shape = tuple(manifest["input_shape"])
        numpy_model = folder / runtime.INFERENCE_FILE
        if numpy_model.is_file() and not use_keras:
            forward = runtime.NumpyModel.load(numpy_model, input_shape)
        else:
            forward = artifacts.load_run(folder).model.predict_on_batch
        return cls(forward, input_shape, manifest["label_names"], manifest, folder)

    def predict_digits(self, digits: np.ndarray) -> np.ndarray:
        """(N, 28, 28) uint8 MNIST-style digits -> (N, 10) probabilities."""
        from digitlab.models import prepare

        digits = np.asarray(digits)
        if len(digits) == 0:
            return np.zeros((0, len(self.label_names)), dtype=np.float64)
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

        Raises ImageError (or EmptyImageError) for the first image that cannot be read; use
        ``predict_many`` to go on past it.
        """
        digits = [preprocess.prepare_image(image) for image in images]
        return self._results(digits)

    def predict_number(self, image) -> NumberPrediction:
        """An image of a written number (digits side by side) -> its text and each digit."""
        return self._number([digit.image for digit in preprocess.prepare_number(image)])

    def predict_many(
        self, named: Iterable[tuple[str, object]], number: bool = False, chunk: int = CHUNK
    ) -> Iterator[tuple[str, Answer | ImageError]]:
        """(name, image) pairs -> (name, answer or that image's ImageError), in order.

        One bad image fails only itself. Images are prepared ``chunk`` at a time (over all
        cores for large chunks), then predicted together.
        """
        named = list(named)
        for start in range(0, len(named), chunk):
            part = named[start : start + chunk]
            prepared = preprocess.prepare_many([image for _, image in part], number=number)
            if number:
                for (name, _), item in zip(part, prepared, strict=True):
                    if isinstance(item, ImageError):
                        yield name, item.naming(name)
                    else:
                        yield name, self._number([digit.image for digit in item])
                continue
            good = [item for item in prepared if not isinstance(item, ImageError)]
            results = iter(self._results(good))
            for (name, _), item in zip(part, prepared, strict=True):
                if isinstance(item, ImageError):
                    yield name, item.naming(name)
                else:
                    yield name, next(results)

    def explain(self, digit: np.ndarray, label: int | None = None) -> np.ndarray:
        """Which pixels pushed the answer toward ``label`` (default: the predicted one), by
        occlusion: each 6x6 patch (stride 2) is blanked and the drop in that label's
        probability is spread over the patch's pixels.

        (28, 28) uint8 -> (28, 28) float, >= 0 where blanking hurt the answer, and 0 on blank
        background. Chosen over gradients because it reads directly ("without this part, it is
        less sure"), needs no backend (it runs on the NumPy copy), and is tested to be no noise:
        blanking the map's top 10% of ink costs far more confidence than a random 10%.
        """
        digit = np.asarray(digit, dtype=np.uint8)
        [base] = self.predict_digits(digit[None])
        label = int(np.argmax(base)) if label is None else label
        side, patch, stride = IMAGE_SIDE, 6, 2
        corners = [(y, x) for y in range(0, side - patch + 1, stride)
                   for x in range(0, side - patch + 1, stride)]  # fmt: skip
        occluded = np.repeat(digit[None], len(corners), axis=0)
        for index, (y, x) in enumerate(corners):
            occluded[index, y : y + patch, x : x + patch] = 0
        drops = base[label] - self.predict_digits(occluded)[:, label]
        total, count = np.zeros((side, side)), np.zeros((side, side))
        for drop, (y, x) in zip(drops, corners, strict=True):
            total[y : y + patch, x : x + patch] += drop
            count[y : y + patch, x : x + patch] += 1
        return np.clip(total / np.maximum(count, 1), 0, None) * (digit > 0)

    def _results(self, digits: list[np.ndarray]) -> list[Prediction]:
        stacked = np.stack(digits) if digits else np.zeros((0, IMAGE_SIDE, IMAGE_SIDE), np.uint8)
        probabilities = self.predict_digits(stacked)
        return [self.result_for(d, p) for d, p in zip(digits, probabilities, strict=True)]

    def _number(self, digits: list[np.ndarray]) -> NumberPrediction:
        results = self._results(digits)
        return NumberPrediction("".join(r.label_name for r in results), results)
