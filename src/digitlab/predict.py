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
from typing import TYPE_CHECKING

import numpy as np

from digitlab import DigitlabError, artifacts, preprocess, runtime
from digitlab.config import DIGIT_LABELS, IMAGE_SIDE
from digitlab.preprocess import ImageError

if TYPE_CHECKING:
    import keras

    from digitlab.models import ReadDigit

BATCH_SIZE = 256  # digits per model call when predicting many images
CHUNK = 2048  # images prepared at once by predict_many: bounds memory on huge folders
# Digits read at most this share of their height wide each, on average, are a narrow hand, read
# again widened (``read_strips``). MNIST's are 0.6-0.8. Measured on benchmarks/number_reading.py's
# font numbers (fifteenth session): 166 -> 174 of 192 read exactly; reading every number twice
# gained less (169): outlined strokes, widened thicker, read worse.
NARROW_HAND = 0.5


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
    x: float | None = None  # in a number: the digit's horizontal centre in the image (px)
    # Whether it looks like a digit at all, by the run's "not a digit" rule (None: the run has
    # none, or a number reader read it), and the score the rule compares with its threshold.
    is_digit: bool | None = None
    digit_score: float | None = None

    def to_dict(self, with_input: bool = False) -> dict:
        answer = {
            "label": self.label,
            "label_name": self.label_name,
            "confidence": self.confidence,
            "probabilities": self.probabilities,
        }
        if self.is_digit is not None:
            answer["is_digit"] = self.is_digit
            answer["digit_score"] = round(self.digit_score, 6)
        if self.x is not None:
            answer["x"] = round(self.x, 1)
        if with_input:
            answer["input_png"] = png_base64(self.input)
        return answer


# How a number was read: by the number reader (a model trained on whole numbers), or by cutting
# it into ink blobs and reading each with a digit model.
NUMBER_READER = "number reader"
SEGMENTATION = "segmentation"
SEGMENT = "segment"  # Predictor.for_numbers(reader=SEGMENT): blob segmentation, no reader


@dataclass
class NumberPrediction:
    text: str
    digits: list[Prediction] = field(default_factory=list)
    reader: str = SEGMENTATION
    strip: np.ndarray | None = None  # (28, 224) uint8: what the number reader saw
    checked_by: str | None = None  # the digit model that checked the reader's digits
    # Whether it looks like a written number at all, by the reader's "not a number" rule (None:
    # the reader has none, or digits were cut apart and read one by one), and the reading's
    # score (models.reading_score) that the rule compares with its threshold.
    is_number: bool | None = None
    number_score: float | None = None

    @property
    def confidence(self) -> float:
        """The chance that every digit is right, if the digits' errors are independent."""
        return float(np.prod([digit.confidence for digit in self.digits]))

    def to_dict(self, with_input: bool = False) -> dict:
        answer = {
            "text": self.text,
            "confidence": self.confidence,
            "reader": self.reader,
            "digits": [digit.to_dict(with_input) for digit in self.digits],
        }
        if self.checked_by:
            answer["checked_by"] = self.checked_by
        if self.is_number is not None:
            answer["is_number"] = self.is_number
            answer["number_score"] = round(self.number_score, 6)
        if with_input:  # what was read, so that a wrong reading of any length can be shown
            answer["input_png"] = png_base64(self.input)
        return answer

    @property
    def input(self) -> np.ndarray:
        """The reader's strip, or the digits' inputs side by side."""
        if self.strip is not None:
            return self.strip
        if not self.digits:
            return np.zeros((IMAGE_SIDE, IMAGE_SIDE), np.uint8)
        return np.hstack([digit.input for digit in self.digits])


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
        # (N, *input_shape) float32 -> (N, 10) probabilities; a number reader's -> (N, steps, 11)
        self.forward = forward
        self.input_shape = tuple(input_shape)
        self.label_names = list(label_names)
        self.manifest = manifest or {}
        self.folder = folder  # the run folder it came from, if any
        # A number reader's digit model: it reads each blob group that holds one digit, and
        # the two readings are combined (``read_strips``). None: the reader alone.
        self.checker: Predictor | None = None

    @property
    def reads_numbers(self) -> bool:
        """A number reader: every image is read as a whole written number."""
        return self.manifest.get("reads") == "number"

    @property
    def description(self) -> str:
        """Which model answers, for people: "the cnn of runs/20261129-101500-cnn"."""
        if self.folder:
            return artifacts.describe_run(self.folder, self.manifest)
        return f"the {self.manifest.get('model', 'model')}"

    @property
    def ready_made(self) -> bool:
        return bool(self.folder) and artifacts.is_ready_made(self.folder)

    @classmethod
    def of_model(cls, model: keras.Model) -> Predictor:
        """A digit model in memory, called through ``models.inference``: safe while other
        threads save or call the same model."""
        from digitlab.models import inference

        return cls(inference(model), tuple(model.input_shape[1:]))

    @classmethod
    def from_run(cls, run: Path | None = None, use_keras: bool = False) -> Predictor:
        """The model of a run folder (default ``runs/latest``): its NumPy copy when it has
        one, else (or with ``use_keras``) the Keras model."""
        from digitlab.models import inference

        folder = artifacts.resolve_run(run)
        manifest = artifacts.read_manifest(folder)
        input_shape = tuple(manifest["input_shape"])
        numpy_model = folder / runtime.INFERENCE_FILE
        if numpy_model.is_file() and not use_keras:
            forward = runtime.NumpyModel.load(numpy_model, input_shape)
        else:
            forward = inference(artifacts.load_run(folder).model)
        predictor = cls(forward, input_shape, manifest["label_names"], manifest, folder)
        if predictor.reads_numbers:
            predictor.checker = cls.checker_for_reader(use_keras)
        return predictor

    @classmethod
    def checker_for_reader(
        cls, use_keras: bool = False, run: Path | None = None
    ) -> Predictor | None:
        """The digit model that checks a number reader: ``run``, else the newest digit run
        if it has a "not a digit" output (a CNN, not the tutorial's MLP), else the ready-made
        CNN; None if there is none."""
        from digitlab import models

        if run is None:
            newest = artifacts.latest_digit_run()
            kind = artifacts.read_manifest(newest).get("model") if newest else None
            rejects = kind in models.MODELS and models.get(kind).rejects
            run = newest if rejects else artifacts.ready_run("digit")
            if run is None:  # no digit model at all: the reader reads alone
                return None
        checker = cls.from_run(run, use_keras)
        if checker.reads_numbers:
            raise DigitlabError(f"{checker.folder} is a number reader, not a digit model")
        return checker

    @classmethod
    def for_numbers(
        cls, run: Path | None = None, reader: Path | str | None = None, use_keras: bool = False
    ) -> Predictor:
        """What reads written numbers: the number reader ``reader``; with ``reader`` None,
        ``run`` if it is a number reader, else the newest number reader (``runs/latest-reader``),
        else blob segmentation with the digit model ``run`` (default ``runs/latest``). With
        ``reader="segment"``, always blob segmentation with the digit model."""
        if reader == SEGMENT:
            return cls.from_run(run, use_keras)
        if reader is not None:
            chosen = cls.from_run(Path(reader), use_keras)
            if not chosen.reads_numbers:
                raise DigitlabError(
                    f"{chosen.folder} is a {chosen.manifest.get('model')} (one digit per image), "
                    "not a number reader"
                )
            if run is not None:  # the digit model named checks the reader
                chosen.checker = cls.checker_for_reader(use_keras, run)
            return chosen
        if run is not None:
            return cls.from_run(run, use_keras)
        newest = artifacts.latest_reader()
        return cls.from_run(newest, use_keras) if newest else cls.from_run(None, use_keras)

    def predict_digits(self, digits: np.ndarray) -> np.ndarray:
        """(N, 28, 28) uint8 MNIST-style digits -> (N, 10) probabilities."""
        from digitlab.models import split_rejection

        return split_rejection(self._outputs(digits))[0]

    def scored_digits(self, digits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 28, 28) uint8 MNIST-style digits -> ((N, 10) probabilities, (N,) how much each
        looks like a digit: ``models.split_rejection``'s score, averaged over the shifts the
        run's rule was calibrated with, if any)."""
        from digitlab.models import shifted_scores, split_rejection

        digits = np.asarray(digits)
        outputs = self._outputs(digits)
        probabilities, scores = split_rejection(outputs)
        if self.score_shifts and len(digits):
            scores = shifted_scores(self._outputs, digits, self.score_shifts, as_given=outputs)
        return probabilities, scores

    def digit_probabilities(
        self, digits: list[preprocess.PreparedDigit], as_prepared: np.ndarray | None = None
    ) -> np.ndarray:
        """Prepared digits -> (N, 10) probabilities. A thin line's digit is read thickened
        (its ``image``) and as written (``as_written``: a thin pen or the outline of a hollow
        stroke; thickened, an outline's loops close), the two averaged: measured on
        benchmarks/robustness.py's 2,000 digits, hollow strokes 95.05% -> 96.35%, clean scans
        99.2% -> 99.3%, photographed digits 98.9% -> 98.85% (one digit), no other condition
        lower (docs/performance.md, sixteenth session).
        Only for a model trained on other writers' pens (``handwriting_share``): the
        tutorial's MLP, which never saw a thin pen, reads thin pens 0.45 points worse so.
        ``as_prepared``: the images' probabilities, if already computed."""
        if as_prepared is None:
            as_prepared = self.predict_digits(np.stack([digit.image for digit in digits]))
        config = self.manifest.get("config")
        if not (isinstance(config, dict) and config.get("handwriting_share")):
            return as_prepared
        thin = [index for index, digit in enumerate(digits) if digit.as_written is not None]
        if not thin:
            return as_prepared
        probabilities = np.array(as_prepared, copy=True)
        as_written = self.predict_digits(np.stack([digits[index].as_written for index in thin]))
        probabilities[thin] = (probabilities[thin] + as_written) / 2
        return probabilities

    def _outputs(self, digits: np.ndarray) -> np.ndarray:
        """(N, 28, 28) uint8 digits -> the model's (N, 10) or (N, 11) outputs, in batches."""
        from digitlab.models import prepare

        digits = np.asarray(digits)
        if len(digits) == 0:
            return np.zeros((0, len(self.label_names)))
        batches = [
            np.asarray(self.forward(prepare(digits[start : start + BATCH_SIZE], self.input_shape)))
            for start in range(0, len(digits), BATCH_SIZE)
        ]
        return np.concatenate(batches)

    @property
    def score_shifts(self) -> tuple[tuple[int, int], ...]:
        """The shifts the "not a digit" score is averaged over: the run's rule says (rules
        calibrated before the fourteenth session were on the digit as given: none)."""
        rule = self.manifest.get("rejection")
        shifts = rule.get("averaged_over_shifts") if isinstance(rule, dict) else None
        return tuple((int(rows), int(columns)) for rows, columns in shifts or ())

    @property
    def rejection_threshold(self) -> float | None:
        """Below this digit score an input is "not a digit" (a number reader's: below this
        reading score, "not a number"); None if the run has no rule."""
        rule = self.manifest.get("rejection")
        return float(rule["threshold"]) if isinstance(rule, dict) else None

    def result_for(
        self, digit: np.ndarray, probabilities: np.ndarray, digit_score: float | None = None
    ) -> Prediction:
        label = int(np.argmax(probabilities))
        threshold = self.rejection_threshold
        judged = digit_score is not None and threshold is not None
        return Prediction(
            label=label,
            confidence=float(probabilities[label]),
            probabilities=[round(float(p), 6) for p in probabilities],
            input=digit,
            label_name=self.label_names[label],
            is_digit=bool(digit_score >= threshold) if judged else None,
            digit_score=float(digit_score) if judged else None,
        )

    def predict(self, images: Iterable) -> list[Prediction]:
        """Paths, image bytes, PIL images or arrays -> one Prediction each.

        Raises ImageError (or EmptyImageError) for the first image that cannot be read; use
        ``predict_many`` to go on past it.
        """
        return self._results([preprocess.prepare_digit(image) for image in images])

    def predict_number(self, image) -> NumberPrediction:
        """An image of a written number (digits side by side) -> its text and each digit."""
        if self.reads_numbers:
            return self.read_strips([preprocess.prepare_strip(image)])[0]
        return self._number(preprocess.prepare_number(image))

    def read_strips(self, strips: list[preprocess.PreparedStrip]) -> list[NumberPrediction]:
        """The number reader on prepared strips -> one NumberPrediction each.

        Each member of the reader (``models.build_reader(members)``) reads the strip, each
        reading checked by the digit model (``_checked``); where they differ, the one that
        all members and the digit model together find likeliest (``_support``) is the answer.
        A narrow hand (its digits read at most NARROW_HAND of their height wide each) is read
        again from its widened strip (``PreparedStrip.widened``), and the reading likelier on
        its own strip kept.
        """
        from digitlab.models import reading_score

        if not strips:
            return []
        checking = self.checker is not None and any(strip.digits for strip in strips)
        checks = self._checks(strips) if checking else [[] for _ in strips]
        read = [
            (strip, members, self._reading(strip, members, found))
            for strip, members, found in zip(strips, self._members(strips), checks, strict=True)
        ]
        narrow = [
            index
            for index, (strip, _, reading) in enumerate(read)
            if strip.widened is not None and self._narrow(strip, reading)
        ]
        widened = [strips[index].widened for index in narrow]
        wider_checks = self._checks(widened) if checking else [[] for _ in widened]
        for index, strip, members, found in zip(
            narrow, widened, self._members(widened), wider_checks, strict=True
        ):
            reading = self._reading(strip, members, found)
            if self._support(strip, members, reading, found) > self._support(
                *read[index], checks[index]
            ):
                read[index] = strip, members, reading
        answers = []
        for strip, members, results in read:
            text = "".join(result.label_name for result in results)
            answer = NumberPrediction(
                text, results, NUMBER_READER, strip.image,
                self.checker.description if checking else None,
            )  # fmt: skip
            if self.rejection_threshold is not None:  # the reader's "not a number" rule
                answer.number_score = reading_score(members, [r.label for r in results])
                answer.is_number = answer.number_score >= self.rejection_threshold
            answers.append(answer)
        return answers

    def _members(self, strips: list[preprocess.PreparedStrip]) -> np.ndarray:
        """Each strip's per-step probabilities by each member: (N, members, steps, 11)."""
        from digitlab.models import member_steps, read_steps

        if not strips:
            return np.zeros((0, 0, 0, 0), np.float32)
        inputs = np.stack([strip.image for strip in strips])[..., None].astype(np.float32) / 255
        return member_steps(np.concatenate(
            [read_steps(self.forward, inputs[start : start + BATCH_SIZE])
             for start in range(0, len(inputs), BATCH_SIZE)]
        ))  # fmt: skip

    def _checks(self, strips: list[preprocess.PreparedStrip]) -> list[list[np.ndarray]]:
        """The digit model's output for each blob group of each strip."""
        blob_digits = [digit for strip in strips for digit in strip.digits]
        if not blob_digits:
            return [[] for _ in strips]
        checked = iter(self.checker.digit_probabilities(blob_digits))
        return [[next(checked) for _ in strip.digits] for strip in strips]

    def _reading(
        self, strip: preprocess.PreparedStrip, members: np.ndarray, checks: list[np.ndarray]
    ) -> list[Prediction]:
        """Each member's reading of one strip, checked (``_checked``); the likeliest to all
        members and the digit model together where they differ (``_support``)."""
        from digitlab.models import ctc_decode

        readings = []
        for steps in members:
            results = [
                self._read_digit(strip, steps, digit) for digit in ctc_decode(steps[None])[0]
            ]
            readings.append(self._checked(strip, members, results, checks) if checks else results)
        if len({tuple(result.label for result in reading) for reading in readings}) == 1:
            return readings[0]
        return max(readings, key=lambda reading: self._support(strip, members, reading, checks))

    @staticmethod
    def _narrow(strip: preprocess.PreparedStrip, reading: list[Prediction]) -> bool:
        """Whether the digits read are on average at most NARROW_HAND of their height wide."""
        return strip.ink_width <= NARROW_HAND * strip.ink_height * max(len(reading), 1)

    def _read_digit(
        self, strip: preprocess.PreparedStrip, steps: np.ndarray, digit: ReadDigit
    ) -> Prediction:
        """A digit the reader read at one of its steps -> its Prediction: the 28 strip columns
        around that step as its input, and where it lies in the source image."""
        from digitlab.config import STRIP_WIDTH

        centre = (digit.step + 0.5) * STRIP_WIDTH / len(steps)  # strip column of its step
        left = int(np.clip(round(centre) - IMAGE_SIDE // 2, 0, STRIP_WIDTH - IMAGE_SIDE))
        result = self.result_for(strip.image[:, left : left + IMAGE_SIDE], digit.probabilities)
        result.x = strip.source_x(centre)
        return result

    @staticmethod
    def _in_groups(groups: list[preprocess.PreparedDigit], read: list[Prediction]) -> list[list]:
        """Each digit read goes to the blob group it lies in (else the nearest): per group, the
        indices of its digits in ``read``."""

        def distance(result: Prediction, group: preprocess.PreparedDigit) -> float:
            left, right = group.box[0], group.box[2]
            return (
                0.0
                if left <= result.x < right
                else min(abs(result.x - left), abs(result.x - right)) + 1
            )

        in_group: list[list[int]] = [[] for _ in groups]
        for index, result in enumerate(read):
            nearest = min(range(len(groups)), key=lambda g: distance(result, groups[g]))
            in_group[nearest].append(index)
        return in_group

    def _support(
        self,
        strip: preprocess.PreparedStrip,
        members: np.ndarray,
        reading: list[Prediction],
        checks: list[np.ndarray],
    ) -> float:
        """How likely a reading is to the reader and the digit model together: the reader's
        probability of its text over all alignments, by every member
        (``models.readers_log_likelihood``), times the digit model's probabilities of the
        digits it reads alone in a blob group (``checks``: the digit model's output for each
        group; none: the reader alone)."""
        from digitlab.models import readers_log_likelihood

        labels = [result.label for result in reading]
        digit_model = 0.0
        if checks:
            for group, found in zip(checks, self._in_groups(strip.digits, reading), strict=True):
                if len(found) == 1:
                    digit_model += float(np.log(max(group[labels[found[0]]], 1e-30)))
        return readers_log_likelihood(members, labels) + digit_model

    def _checked(
        self,
        strip: preprocess.PreparedStrip,
        members: np.ndarray,
        read: list[Prediction],
        checks: list[np.ndarray],
    ) -> list[Prediction]:
        """The reader's digits, checked by the digit model where the blobs allow it.

        Each digit read goes to the blob group it lies in (else the nearest). A group with one
        digit read is read by both models: their probabilities multiplied (measured on
        `benchmarks/number_reading.py`'s numbers: the CNN reads a lone digit better than the
        reader, the reader knows which groups hold several). Groups of touching digits keep
        the reader's digits (a narrow 1 against its neighbour included); a group the reader
        read nothing in stays unread.

        Then the blob groups read one digit each by the digit model alone (blob segmentation)
        replace that reading if the two models find them likelier (``_support``): the reader's
        probability of either text over all its alignments (its best path may add a digit or
        lose one that its other paths read), times the digit model's probabilities of the
        digits it read alone in a group. Groups of touching digits are one wrong digit to
        segmentation, which the reader finds unlikely.
        """
        groups = strip.digits
        if not groups:
            return read
        results = []
        for group, found, check in zip(groups, self._in_groups(groups, read), checks, strict=True):
            if len(found) != 1:
                results.extend(read[index] for index in found)
                continue
            combined = np.asarray(check, np.float64) * np.asarray(read[found[0]].probabilities)
            combined = combined / max(float(combined.sum()), 1e-12)
            result = self.result_for(group.image, combined)
            result.x = group.centre_x
            results.append(result)
        segmented = []
        for group, check in zip(groups, checks, strict=True):
            answer = self.result_for(group.image, np.asarray(check, np.float64))
            answer.x = group.centre_x
            segmented.append(answer)
        if [r.label for r in segmented] == [r.label for r in results]:
            return results
        better = self._support(strip, members, segmented, checks) > self._support(
            strip, members, results, checks
        )
        return segmented if better else results

    def predict_many(
        self,
        named: Iterable[tuple[str, object]],
        number: bool = False,
        chunk: int = CHUNK,
        workers: int | None = None,
    ) -> Iterator[tuple[str, Answer | ImageError]]:
        """(name, image) pairs -> (name, answer or that image's ImageError), in order.

        One bad image fails only itself. Images are prepared ``chunk`` at a time (over
        ``workers`` processes, default one per core, for large chunks), then predicted
        together.
        """
        named = list(named)
        for start in range(0, len(named), chunk):
            part = named[start : start + chunk]
            if self.reads_numbers:
                prepared = preprocess.prepare_many([image for _, image in part], "strip", workers)
                good = [item for item in prepared if not isinstance(item, ImageError)]
                read = iter(self.read_strips(good))
                for (name, _), item in zip(part, prepared, strict=True):
                    yield name, item.naming(name) if isinstance(item, ImageError) else next(read)
                continue
            kind = "number" if number else "prepared digit"
            prepared = preprocess.prepare_many([image for _, image in part], kind, workers)
            if number:
                for (name, _), item in zip(part, prepared, strict=True):
                    if isinstance(item, ImageError):
                        yield name, item.naming(name)
                    else:
                        yield name, self._number(item)
                continue
            good = [item for item in prepared if not isinstance(item, ImageError)]
            results = iter(self._results(good))
            for (name, _), item in zip(part, prepared, strict=True):
                if isinstance(item, ImageError):
                    yield name, item.naming(name)
                else:
                    yield name, next(results)

    def explain(self, digit: np.ndarray, label: int | None = None) -> np.ndarray:
        """Which pixels pushed the answer toward ``label`` (default: the predicted one):
        ``explain.occlusion_map``. (28, 28) uint8 -> (28, 28) float, >= 0."""
        from digitlab.explain import occlusion_map

        return occlusion_map(digit, self.predict_digits, label)

    def _results(self, digits: list[preprocess.PreparedDigit]) -> list[Prediction]:
        images = [digit.image for digit in digits]
        stacked = np.stack(images) if digits else np.zeros((0, IMAGE_SIDE, IMAGE_SIDE), np.uint8)
        probabilities, scores = self.scored_digits(stacked)
        probabilities = self.digit_probabilities(digits, probabilities)
        return [
            self.result_for(image, p, score)
            for image, p, score in zip(images, probabilities, scores, strict=True)
        ]

    def _number(self, digits: list[preprocess.PreparedDigit]) -> NumberPrediction:
        results = self._results(digits)
        for result, digit in zip(results, digits, strict=True):
            result.x = digit.centre_x
        return NumberPrediction("".join(r.label_name for r in results), results)
