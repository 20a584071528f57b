"""The number reader checked by a digit model: which blob group each digit read lies in, how
the two readings combine, when blob segmentation wins, a narrow hand read again widened, and the
gains on real MNIST numbers with the shipped models."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from digitlab import artifacts, preprocess, synthetic
from digitlab.config import IMAGE_SIDE, NUM_CLASSES, STRIP_WIDTH
from digitlab.models import READER_CLASSES
from digitlab.predict import NUMBER_READER, Predictor
from digitlab.preprocess import PreparedDigit, PreparedStrip
from digitlab.schemas import NumberAnswer


def reader_output(read: dict[int, dict[int, float]], step_pixels: int = 4) -> np.ndarray:
    """A reader's (1, steps, 11) output, a step per ``step_pixels`` columns of the strip
    (4: as the ready-made reader's): blank everywhere but at the steps of ``read``
    ({step: {digit: probability}})."""
    steps = np.zeros((1, STRIP_WIDTH // step_pixels, READER_CLASSES), np.float32)
    steps[0, :, 0] = 1.0
    for step, digits in read.items():
        steps[0, step, 0] = 0.0
        for digit, probability in digits.items():
            steps[0, step, digit + 1] = probability
    return steps


def one_hot_ish(digit: int, probability: float) -> np.ndarray:
    row = np.full(NUM_CLASSES, (1 - probability) / (NUM_CLASSES - 1), np.float32)
    row[digit] = probability
    return row


def group(left: int, right: int) -> PreparedDigit:
    return PreparedDigit(np.zeros((IMAGE_SIDE, IMAGE_SIDE), np.uint8), (left, 0, right, 40))


@pytest.fixture
def strip() -> PreparedStrip:
    """A number whose source x equals strip x - 4, cut into four blob groups: a lone digit, a
    narrow one, a wide one (two touching digits) and one the reader reads nothing in."""
    image = np.zeros((IMAGE_SIDE, STRIP_WIDTH), np.uint8)
    groups = [group(0, 20), group(30, 40), group(45, 100), group(105, 120)]
    return PreparedStrip(image, 100, 0.0, 100.0, groups)


def predictors(checked_labels: list[np.ndarray]) -> tuple[Predictor, Predictor]:
    # steps at source x 10 (the lone digit), 30 and 38 (the narrow one), 50 and 78 (the wide)
    output = reader_output({
        3: {3: 0.55, 5: 0.45}, 8: {1: 1.0}, 10: {1: 1.0}, 13: {4: 1.0}, 20: {7: 1.0},
    })  # fmt: skip
    reader = Predictor(
        lambda strips: np.repeat(output, len(strips), axis=0),
        (IMAGE_SIDE, STRIP_WIDTH, 1),
        manifest={"reads": "number", "model": "reader"},
    )
    checker = Predictor(
        lambda digits: np.stack(checked_labels)[: len(digits)],
        (IMAGE_SIDE, IMAGE_SIDE, 1),
        manifest={"model": "cnn"},
    )
    return reader, checker


def test_a_lone_digit_is_read_by_both_and_a_group_of_several_is_the_readers(strip):
    checks = [one_hot_ish(5, 0.9), one_hot_ish(1, 0.99), one_hot_ish(0, 0.5), one_hot_ish(8, 0.9)]
    reader, checker = predictors(checks)
    alone = reader.read_strips([strip])[0]
    assert alone.text == "31147" and alone.checked_by is None
    reader.checker = checker
    answer = reader.read_strips([strip])[0]
    # 3 (reader 0.55) against 5 (0.45), the digit model 5 (0.9): combined, 5; the narrow group
    # keeps the reader's two touching 1s, the wide one its 4 and 7; the last was read as nothing
    assert answer.text == "51147"
    first = answer.digits[0]
    expected = 0.45 * 0.9 / (0.45 * 0.9 + 0.55 * 0.1 / 9)
    assert first.confidence == pytest.approx(expected, abs=1e-5)
    assert sum(first.probabilities) == pytest.approx(1, abs=1e-4)
    assert [digit.x for digit in answer.digits] == [10.0, 30.0, 38.0, 50.0, 78.0]
    shown = answer.to_dict(with_input=True)
    assert shown["checked_by"] == "the cnn" and shown["reader"] == NUMBER_READER
    NumberAnswer.model_validate(shown)


def test_a_reader_of_finer_steps_places_its_digits_where_they_are(strip):
    """A reader of another shape (steps of 2 strip columns where the ready-made one's are 4,
    measured in the sixteenth session): each digit's x comes from the length of the reader's
    own output."""
    coarse = {3: {3: 1.0}, 8: {1: 1.0}, 13: {4: 1.0}}
    fine = {2 * step: digits for step, digits in coarse.items()}  # columns 12-14, not 12-16
    xs = []
    for step_pixels, read in ((4, coarse), (2, fine)):
        output = reader_output(read, step_pixels)
        reader = Predictor(
            lambda strips, output=output: np.repeat(output, len(strips), axis=0),
            (IMAGE_SIDE, STRIP_WIDTH, 1),
            manifest={"reads": "number", "model": "reader"},
        )
        answer = reader.read_strips([strip])[0]
        assert answer.text == "314"
        xs.append([digit.x for digit in answer.digits])
    assert xs[0] == [10.0, 30.0, 50.0]  # the middle of 4-column steps 3, 8, 13
    assert xs[1] == pytest.approx([9.0, 29.0, 49.0])  # the middle of 2-column steps 6, 16, 26


def test_agreeing_models_change_nothing_and_no_groups_leave_the_reader_alone(strip):
    checks = [one_hot_ish(3, 0.9), one_hot_ish(1, 0.99), one_hot_ish(0, 0.5), one_hot_ish(8, 0.9)]
    reader, checker = predictors(checks)
    reader.checker = checker
    assert reader.read_strips([strip])[0].text == "31147"
    bare = PreparedStrip(strip.image, strip.ink_width, strip.ink_left, strip.ink_right)
    assert reader.read_strips([bare])[0].text == "31147"  # no blob groups: the reader alone


def test_blob_groups_read_alone_win_where_the_reader_finds_them_likelier_too():
    """Two digits written apart. The reader's best path reads a 7 after the 6 (step 4: 7 0.36
    against blank 0.34 and 6 0.30), but summed over its alignments it reads "63" (0.64)
    likelier than "673" (0.36); the digit model reads each group as one digit: "63"."""
    image = np.zeros((IMAGE_SIDE, STRIP_WIDTH), np.uint8)
    strip = PreparedStrip(image, 100, 0.0, 100.0, [group(0, 20), group(30, 40)])
    output = reader_output({3: {6: 1.0}, 4: {6: 0.30, 7: 0.36}, 10: {3: 1.0}})
    output[0, 4, 0] = 0.34
    reader = Predictor(
        lambda strips: np.repeat(output, len(strips), axis=0),
        (IMAGE_SIDE, STRIP_WIDTH, 1),
        manifest={"reads": "number"},
    )
    assert reader.read_strips([strip])[0].text == "673"
    reader.checker = Predictor(
        lambda digits: np.stack([one_hot_ish(6, 0.99), one_hot_ish(3, 0.99)]),
        (IMAGE_SIDE, IMAGE_SIDE, 1),
        manifest={"model": "cnn"},
    )
    answer = reader.read_strips([strip])[0]
    assert answer.text == "63"
    assert [digit.x for digit in answer.digits] == [10.0, 35.0]  # the groups' centres
    assert answer.digits[0].confidence == pytest.approx(0.99, abs=1e-6)
    # the same groups where the reader is sure of its 7: its reading stays
    output[0, 4] = 0
    output[0, 4, 7 + 1] = 1.0
    assert reader.read_strips([strip])[0].text == "673"


def test_the_default_checker_is_the_newest_cnn_else_the_ready_one(mnist_run, monkeypatch):
    monkeypatch.setenv("DIGITLAB_RUNS", str(mnist_run.parent))  # its latest is an MLP
    reader = Predictor.from_run(artifacts.ready_run("number"))
    assert reader.checker.folder == artifacts.ready_run("digit")
    named = Predictor.for_numbers(mnist_run, reader=artifacts.ready_run("number"))
    assert named.checker.folder == mnist_run  # a digit model named is the one that checks


def scan(ink: np.ndarray) -> Image.Image:
    paper = 255 - np.pad(ink * 255, 12)
    image = Image.fromarray(paper.clip(0, 255).astype(np.uint8))
    return image.resize((image.width * 3, image.height * 3), Image.Resampling.BICUBIC)


@pytest.mark.slow
def test_checking_reads_more_real_numbers_exactly(mnist_arrays):
    """The shipped reader and CNN on numbers of 2-6 MNIST test digits written apart or close:
    the checked reading is exact more often than the reader alone. Measured with the reader of
    three members (thirteenth session): 97.75% against 97.25%; with one reader trained on 120,000
    numbers: 97.25% against 96.0%; on 40,000: 94.3% against 92.0%. Three readers leave the CNN
    less to mend in MNIST's own hands (benchmarks/number_reading.py: clean numbers the same,
    numbers by other writers 79.8% -> 83.1%, fonts 84.4% -> 86.5%). The floor: one number more,
    and 97% read."""
    _, (images, labels) = mnist_arrays
    pools = synthetic.digit_pools(labels)
    rng = np.random.default_rng(11)
    texts = [synthetic.random_text(int(rng.integers(2, 7)), rng) for _ in range(400)]
    scans = [
        scan(synthetic.compose(text, images, pools, rng, gap_kind=("apart", "close")[i % 2]))
        for i, text in enumerate(texts)
    ]
    reader = Predictor.from_run(artifacts.ready_run("number"))
    assert reader.checker is not None

    def exact() -> float:
        read = [reader.predict_number(image).text for image in scans]
        return float(np.mean([r == t for r, t in zip(read, texts, strict=True)]))

    checked = exact()
    reader.checker = None
    alone = exact()
    assert checked >= 0.97 and checked > alone, (checked, alone)


def test_members_that_read_a_lone_digit_apart_are_decided_by_the_digit_model(strip):
    """A reader of two members: one reads the lone digit 3 over 5, the other 5 over 3, equally
    sure. Checked against a digit model torn between 3 and 5, each keeps its own reading; the
    digit model's slight preference decides between them."""
    read = {8: {1: 1.0}, 10: {1: 1.0}, 13: {4: 1.0}, 20: {7: 1.0}}
    first = reader_output({3: {3: 0.6, 5: 0.4}, **read})
    second = reader_output({3: {5: 0.6, 3: 0.4}, **read})
    both = np.concatenate([first, second], axis=-1)  # members side by side, as the model gives
    reader = Predictor(
        lambda strips: np.repeat(both, len(strips), axis=0),
        (IMAGE_SIDE, STRIP_WIDTH, 1),
        manifest={"reads": "number", "model": "reader"},
    )
    others = [one_hot_ish(1, 0.99), one_hot_ish(0, 0.5), one_hot_ish(8, 0.9)]
    for preferred, expected in ((5, "51147"), (3, "31147")):
        torn = np.zeros(NUM_CLASSES, np.float32)
        torn[[preferred, 8 - preferred]] = 0.55, 0.45  # 5 and 3 (8 - 5 = 3)
        _, reader.checker = predictors([torn, *others])
        assert reader.read_strips([strip])[0].text == expected


def narrow_strip(ink_width: int, widened_width: int) -> PreparedStrip:
    """A number 20 rows tall, ``ink_width`` columns wide, with its widened strip."""

    def strip(width: int) -> PreparedStrip:
        image = np.zeros((IMAGE_SIDE, STRIP_WIDTH), np.uint8)
        image[4:24, 4 : 4 + width] = 255
        return PreparedStrip(image, width, 0.0, 100.0)

    narrow = strip(ink_width)
    narrow.widened = strip(widened_width)
    return narrow


def two_readings(narrow_reads: str, sure: float, wider_reads: str, wider_sure: float, width: int):
    """A reader that reads ``narrow_reads`` in a strip whose ink is at most ``width`` columns
    wide and ``wider_reads`` in a wider one, each digit that sure (the rest blank)."""

    def output(text: str, probability: float) -> np.ndarray:
        steps = reader_output({2 + 4 * i: {int(d): probability} for i, d in enumerate(text)})
        steps[0, 2 : 2 + 4 * len(text) : 4, 0] = 1 - probability
        return steps

    def forward(strips: np.ndarray) -> np.ndarray:
        return np.concatenate([
            output(narrow_reads, sure) if np.count_nonzero(strip.max(axis=(0, 2))) <= width
            else output(wider_reads, wider_sure)
            for strip in strips
        ])  # fmt: skip

    return Predictor(forward, (IMAGE_SIDE, STRIP_WIDTH, 1), manifest={"reads": "number"})


def test_a_narrow_hand_is_read_again_widened_and_the_likelier_reading_kept():
    """Two digits read in 18 columns, 20 rows tall: 0.45 of their height wide each, at most
    NARROW_HAND (0.5), so the widened strip is read too and its surer reading answers, with
    the strip it was read from. Wider writing is read once; a less likely widened reading
    loses."""
    reader = two_readings("11", 0.6, "17", 0.99, width=18)
    answer = reader.read_strips([narrow_strip(18, 25)])[0]
    assert answer.text == "17"
    assert np.array_equal(answer.strip, narrow_strip(18, 25).widened.image)
    # in one batch: 24 columns for two digits is 0.6 of their height each, not narrow, so
    # its widened strip (which this reader would read as "17") is not read; the narrow one's is
    wide, narrow = narrow_strip(24, 34), narrow_strip(18, 25)
    both = two_readings("11", 0.6, "17", 0.99, width=24).read_strips([wide, narrow])
    assert [answer.text for answer in both] == ["11", "17"]
    surer = two_readings("11", 0.99, "17", 0.6, width=18)
    assert surer.read_strips([narrow_strip(18, 25)])[0].text == "11"


def test_narrow_handwriting_is_read_better_widened(mnist_arrays):
    """Numbers of 2-6 MNIST test digits written at 55% of their width (a narrow hand), read by
    the shipped models: with the widened second reading 86% exact, without it 66% (150
    numbers, measured; at their own width the two read the same). The floor: 80%, and 10
    points over the single reading."""
    _, (images, labels) = mnist_arrays
    pools = synthetic.digit_pools(labels)
    rng = np.random.default_rng(7)
    texts = [synthetic.random_text(int(rng.integers(2, 7)), rng) for _ in range(100)]
    scans = [
        scan(synthetic.narrowed(synthetic.compose(t, images, pools, rng, gap_kind=gap), 0.55))
        for t, gap in zip(texts, ["apart", "close"] * 50, strict=True)
    ]
    reader = Predictor.from_run(artifacts.ready_run("number"))
    strips = [preprocess.prepare_strip(image) for image in scans]
    widened = [answer.text for answer in reader.read_strips(strips)]
    for strip in strips:
        strip.widened = None
    once = [answer.text for answer in reader.read_strips(strips)]
    exact = [float(np.mean([r == t for r, t in zip(read, texts, strict=True)]))
             for read in (widened, once)]  # fmt: skip
    assert exact[0] >= 0.8 and exact[0] >= exact[1] + 0.1, exact
