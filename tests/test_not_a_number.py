"""A number reader's "not a number" rule: the reading score it compares, its calibration, the
answer's keys, the CLI's line, and the shipped reader on words, doodles and real numbers."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from digitlab import artifacts, models, synthetic, training
from digitlab.config import IMAGE_SIDE, STRIP_WIDTH
from digitlab.models import READER_CLASSES, READER_STEP_PIXELS
from digitlab.predict import Predictor
from digitlab.preprocess import PreparedStrip
from digitlab.schemas import NumberAnswer

STEPS = STRIP_WIDTH // READER_STEP_PIXELS


def steps_reading(digits: list[int], sure: float) -> np.ndarray:
    """One member's (STEPS, 11) output: each digit at a step of its own, ``sure`` of it (the rest
    blank), blank elsewhere."""
    steps = np.zeros((STEPS, READER_CLASSES), np.float32)
    steps[:, 0] = 1.0
    for index, digit in enumerate(digits):
        step = 4 + 5 * index
        steps[step] = 0.0
        steps[step, 0], steps[step, digit + 1] = 1 - sure, sure
    return steps


def test_the_reading_score_is_per_digit_and_per_member():
    short, long = [4, 2], [4, 2, 7, 1, 9, 0]
    sure = models.reading_score(steps_reading(short, 0.99)[None], short)
    assert sure == pytest.approx(0.99, abs=0.01)
    # a longer number read as surely scores the same: no penalty for its length
    assert models.reading_score(steps_reading(long, 0.99)[None], long) == pytest.approx(
        sure, abs=0.01
    )
    # two members as sure as one score as one does; an unsure reading lower
    pair = np.stack([steps_reading(short, 0.99)] * 2)
    assert models.reading_score(pair, short) == pytest.approx(sure, abs=1e-6)
    assert models.reading_score(steps_reading(short, 0.5)[None], short) < 0.6
    # a reading the output does not hold at all: no alignment fits
    assert models.reading_score(steps_reading(short, 0.99)[None], [5, 5]) < 1e-6


def test_calibration_rejects_its_share_of_the_numbers():
    scores = np.linspace(0, 1, 1001)
    rule = training.calibrate_number_rejection(scores)
    assert rule["threshold"] == pytest.approx(0.01)
    assert np.mean(scores < rule["threshold"]) == pytest.approx(
        training.NUMBER_REJECTION_RATE, abs=0.002
    )


def stand_in_reader(sure: float) -> Predictor:
    output = steps_reading([1, 7], sure)[None]
    return Predictor(
        lambda strips: np.repeat(output, len(strips), axis=0),
        (IMAGE_SIDE, STRIP_WIDTH, 1),
        manifest={"reads": "number", "model": "reader",
                  "rejection": {"score": "reading score", "threshold": 0.8}},
    )  # fmt: skip


def test_a_reading_under_the_threshold_is_not_a_number():
    strip = PreparedStrip(np.zeros((IMAGE_SIDE, STRIP_WIDTH), np.uint8), 100, 0.0, 100.0)
    sure = stand_in_reader(0.95).read_strips([strip])[0]
    unsure = stand_in_reader(0.55).read_strips([strip])[0]
    assert sure.text == unsure.text == "17"
    assert sure.is_number is True and sure.number_score > 0.8
    assert unsure.is_number is False and unsure.number_score < 0.8
    shown = unsure.to_dict()
    assert shown["is_number"] is False and shown["text"] == "17"  # the reading stays
    NumberAnswer.model_validate(shown)
    # a reader without the rule (trained before it) says nothing either way
    bare = stand_in_reader(0.55)
    bare.manifest.pop("rejection")
    answer = bare.read_strips([strip])[0]
    assert answer.is_number is None and "is_number" not in answer.to_dict()


def typed_word(word: str, rng: np.random.Generator) -> Image.Image:
    font = ImageFont.truetype(str(synthetic.training_font_paths()["dejavu"][0]), 56)
    left, top, right, bottom = font.getbbox(word)
    image = Image.new("L", (right - left + 40, bottom - top + 40), 255)
    ImageDraw.Draw(image).text((20 - left, 20 - top), word, fill=0, font=font)
    return image.rotate(rng.uniform(-3, 3), fillcolor=255, expand=True)


def doodles(rng: np.random.Generator) -> Image.Image:
    """Three scribbles side by side, dark on white."""
    marks = synthetic.non_digit_drawings(15, rng)[1::5][:3]
    ink = np.hstack([np.asarray(mark, np.uint8) for mark in marks])
    return Image.fromarray(255 - ink).resize((ink.shape[1] * 2, ink.shape[0] * 2))


def test_the_shipped_reader_tells_words_and_doodles_from_real_numbers(mnist_arrays):
    """Measured on benchmarks/number_reading.py's sets: 1-2% of real numbers and 79% of words
    typed in handwriting fonts are "not a number". Here: 100 numbers of 1-6 MNIST test digits
    scanned, 24 words of letters that do not look like digits, 12 rows of doodles."""
    _, (images, labels) = mnist_arrays
    pools, rng = synthetic.digit_pools(labels), np.random.default_rng(5)
    reader = Predictor.from_run(artifacts.ready_run("number"))
    numbers = []
    for _ in range(100):
        ink = synthetic.compose(
            synthetic.random_text(int(rng.integers(1, 7)), rng), images, pools, rng
        )
        paper = 255 - np.pad(ink * 255, 12).clip(0, 255).astype(np.uint8)
        numbers.append(Image.fromarray(paper).resize((paper.shape[1] * 3, paper.shape[0] * 3)))
    letters = [c for c in synthetic.GLYPHS if c.isalpha()]
    words = ["".join(rng.choice(letters, int(rng.integers(3, 8)))) for _ in range(24)]
    others = [typed_word(word, rng) for word in words] + [doodles(rng) for _ in range(12)]
    numbers_rejected = np.mean([reader.predict_number(n).is_number is False for n in numbers])
    others_rejected = np.mean([reader.predict_number(o).is_number is False for o in others])
    assert numbers_rejected <= 0.04 and others_rejected >= 0.6, (numbers_rejected, others_rejected)


def test_the_cli_says_not_a_number_and_keeps_the_reading(tmp_path):
    word = tmp_path / "word.png"
    typed_word("word", np.random.default_rng(0)).save(word)  # read as digits, unlikely ones
    command = [sys.executable, "-m", "digitlab", "predict", "--number", str(word)]
    plain = subprocess.run(command, capture_output=True, text=True, timeout=120)
    answer = json.loads(
        subprocess.run([*command, "--json"], capture_output=True, text=True, timeout=120).stdout
    )
    assert plain.returncode == 0 and answer["is_number"] is False and answer["text"]
    NumberAnswer.model_validate({key: value for key, value in answer.items() if key != "path"})
    assert plain.stdout.strip() == (
        f"{word}: not a number (read as {answer['text']}, each digit an unlikely reading; "
        "number reader)"
    )
