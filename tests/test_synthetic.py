"""Composed numbers, the strip the reader sees, CTC decoding and the non-digits."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from conftest import make_digits
from digitlab import augment, evaluation, models, preprocess, synthetic
from digitlab.config import IMAGE_SIDE, STRIP_MARGIN, STRIP_WIDTH


@pytest.fixture(scope="module")
def digits():
    images, labels = make_digits(200, seed=3)
    return images, synthetic.digit_pools(labels)


def ink_columns(ink: np.ndarray) -> int:
    return int(np.count_nonzero(ink.max(axis=0) > 0.05))


def test_touching_digits_overlap_and_apart_ones_leave_gaps(digits):
    images, pools = digits
    style = synthetic.Handwriting(slant=0.0, thin_share=0.0, thick_share=0.0)
    apart = synthetic.compose("4747", images, pools, np.random.default_rng(0), style, "apart")
    touching = synthetic.compose("4747", images, pools, np.random.default_rng(0), style, "touching")
    # the same digits (same seed): apart, blank columns separate them; touching, none do
    assert ink_columns(apart) < apart.shape[1]
    assert ink_columns(touching) == touching.shape[1]
    assert touching.shape[1] < apart.shape[1]


def test_random_text_has_its_share_of_ones():
    text = synthetic.random_text(5000, np.random.default_rng(1))
    assert set(text) <= set("0123456789") and len(text) == 5000
    assert 0.17 < text.count("1") / len(text) < 0.23


def test_fit_strip_scales_a_number_to_mnist_height_left_aligned(digits):
    images, pools = digits
    ink = synthetic.compose("305", images, pools, np.random.default_rng(2))
    strip, ink_width = preprocess.fit_strip(ink)
    assert strip.shape == (IMAGE_SIDE, STRIP_WIDTH) and strip.dtype == np.uint8
    rows = np.flatnonzero(strip.max(axis=1) > 30)
    columns = np.flatnonzero(strip.max(axis=0) > 30)
    assert 17 <= rows[-1] - rows[0] + 1 <= 22  # MNIST's 20 px box
    assert columns[0] >= STRIP_MARGIN - 1 and columns[-1] < STRIP_MARGIN + ink_width + 1


def test_a_long_number_is_squeezed_to_fit_the_strip(digits):
    images, pools = digits
    ink = synthetic.compose("1234567890" * 2, images, pools, np.random.default_rng(3))
    strip, ink_width = preprocess.fit_strip(ink)
    assert ink_width == STRIP_WIDTH - 2 * STRIP_MARGIN
    rows = np.flatnonzero(strip.max(axis=1) > 30)
    assert rows[-1] - rows[0] + 1 < 20  # shrunk in height along with the width


def test_prepare_strip_maps_strip_columns_back_to_the_image():
    """Two blobs at known places in a photo-sized image: source_x finds them again."""
    image = np.full((120, 400), 255, np.uint8)
    image[30:90, 100:112] = 0  # a stroke at x 100-112
    image[30:90, 250:300] = 0  # a block at x 250-300
    strip = preprocess.prepare_strip(image)
    assert strip.ink_left == pytest.approx(100, abs=2)
    assert strip.ink_right == pytest.approx(300, abs=2)
    assert strip.source_x(STRIP_MARGIN) == pytest.approx(100, abs=2)
    assert strip.source_x(STRIP_MARGIN + strip.ink_width) == pytest.approx(300, abs=2)


def test_make_numbers_is_the_same_for_any_number_of_workers(digits):
    images, _ = make_digits(200, seed=3)
    labels = make_digits(200, seed=3)[1]
    one = synthetic.make_numbers(images, labels, 300, seed=5, max_length=4, workers=1)
    two = synthetic.make_numbers(images, labels, 300, seed=5, max_length=4, workers=2)
    assert one.texts == two.texts and np.array_equal(one.strips, two.strips)
    assert all(1 <= len(text) <= 4 for text in one.texts)
    targets = one.targets(4)
    assert targets.shape == (300, 4)
    assert [int(v) - 1 for v in targets[0] if v] == [int(c) for c in one.texts[0]]


def test_a_share_of_the_numbers_is_written_with_hollow_strokes_and_read_back():
    images, labels = make_digits(200, seed=3)
    plain = synthetic.make_numbers(images, labels, 200, seed=5, max_length=3, workers=1)
    some = synthetic.make_numbers(
        images, labels, 200, seed=5, max_length=3, workers=1, hollow_share=0.3
    )
    assert not plain.other_writers.any()
    assert 0.2 < some.other_writers.mean() < 0.4  # counted as other writers: scanned, read back
    assert some.texts[0] == plain.texts[0]  # the text is drawn before the pen
    hollow = some.strips[some.other_writers]
    assert hollow.shape[1:] == plain.strips.shape[1:] and hollow.max(axis=(1, 2)).min() > 128


def test_a_strip_without_its_digits_is_the_same_strip():
    image = np.full((120, 400), 255, np.uint8)
    image[30:90, 100:112] = 0
    image[30:90, 250:300] = 0
    whole, bare = preprocess.prepare_strip(image), preprocess.prepare_strip(image, False)
    assert len(whole.digits) == 2 and bare.digits == []
    assert np.array_equal(whole.image, bare.image) and whole.ink_width == bare.ink_width
    assert bare.widened is None  # training numbers need only the strip


def test_the_widened_strip_is_the_same_ink_wider_with_its_groups_widened():
    """Two narrow strokes, 60 px tall and 70 px apart in all: the widened strip holds them
    WIDENED times as wide, at the same height, and maps back to the same places; its blob
    groups are where they were, each digit widened."""
    image = np.full((120, 400), 255, np.uint8)
    image[30:90, 100:110] = 0
    image[30:90, 160:170] = 0
    strip = preprocess.prepare_strip(image)
    widened = strip.widened
    assert strip.ink_height == widened.ink_height == preprocess.MNIST_BOX
    assert widened.ink_width == pytest.approx(strip.ink_width * preprocess.WIDENED, abs=1)
    assert [digit.box for digit in widened.digits] == [digit.box for digit in strip.digits]
    for digit, wider in zip(strip.digits, widened.digits, strict=True):
        width, wider_width = (np.count_nonzero(d.image.max(axis=0) > 128) for d in (digit, wider))
        assert wider_width == pytest.approx(width * preprocess.WIDENED, abs=1)
    assert len(strip.digits) == 2
    assert widened.source_x(STRIP_MARGIN + widened.ink_width) == pytest.approx(170, abs=2)
    columns = np.flatnonzero(widened.image.max(axis=0) > 128)  # the gap widened too
    assert columns[-1] - columns[0] > strip.ink_width


def steps(*labels: int, sure: float = 0.9) -> np.ndarray:
    """Reader output for one number: at each step, ``sure`` on that class (0: blank)."""
    output = np.full((len(labels), models.READER_CLASSES), (1 - sure) / 10)
    output[np.arange(len(labels)), labels] = sure
    return output[None]


def test_ctc_decode_merges_repeats_and_drops_blanks():
    # "1", "1" (one digit over two steps), blank, "1" again (a second 1), blank, "7"
    [number] = models.ctc_decode(steps(0, 2, 2, 0, 2, 0, 0, 8, 0))
    assert [digit.label for digit in number] == [1, 1, 7]
    assert [digit.step for digit in number] == [1, 4, 7]
    for digit in number:
        assert digit.probabilities.sum() == pytest.approx(1)
        assert digit.probabilities.argmax() == digit.label
    assert models.ctc_decode(steps(0, 0, 0)) == [[]]  # nothing written: no digits


def test_ctc_loss_prefers_the_right_reading():
    keras = pytest.importorskip("keras")
    output = steps(0, 5, 0, 3, 0, sure=0.8).astype("float32")
    right = models.ctc_loss(np.array([[5, 3, 0]]), output)  # digits 4, 2: classes 5, 3
    wrong = models.ctc_loss(np.array([[3, 5, 0]]), output)
    assert float(keras.ops.convert_to_numpy(right)[0]) < float(keras.ops.convert_to_numpy(wrong)[0])


def test_number_scores_count_missed_extra_and_wrong_digits():
    scores = evaluation.number_scores(["4619", "15", "7"], ["4619", "5", "71"])
    assert scores["exact"] == pytest.approx(1 / 3)
    assert scores["digit_accuracy"] == pytest.approx(1 - 2 / 7)  # one missed, one extra
    assert scores["right_length"] == pytest.approx(1 / 3)
    assert evaluation.edit_distance("0577", "67") == 3


def test_non_digits_are_prepared_like_a_persons_images():
    made = synthetic.prepared_non_digits(64, seed=0, workers=1)
    assert made.dtype == np.uint8 and made.shape[1:] == (IMAGE_SIDE, IMAGE_SIDE)
    assert 40 <= len(made) <= 64  # some noise has no ink left once preprocessed
    assert not set(synthetic.GLYPHS) & set(synthetic.DIGIT_LIKE)


def test_every_training_font_family_is_installed_and_none_is_a_benchmark_font():
    """The Makefile installs each family the reject class learns letters from; the benchmarks'
    handwriting fonts stay unseen."""
    families = synthetic.training_font_paths()
    assert all(families.values()), [name for name, paths in families.items() if not paths]
    names = [path.stem for paths in families.values() for path in paths]
    benchmark_fonts = {"Humor-Sans", "Breip", "dkg", "femkeklaver", "Rufscript010", "Kristi",
                       "ComicNeue-Regular", "BecauseWeLearn-Regular", "BecauseWeBuild-Regular",
                       "KleeOne-Regular", "DancingScript-Regular"}  # fmt: skip
    assert len(names) >= 70 and not benchmark_fonts & set(names)
    assert not [name for name in names if name.startswith(synthetic.NOT_LETTERS)]
    assert len(synthetic._training_fonts()) == len(synthetic.TRAINING_FONT_FAMILIES)


def test_letters_are_drawn_only_in_fonts_that_have_them():
    from PIL import ImageFont

    path = next(path for path in synthetic.training_font_paths()["dustin"] if path.stem == "Balker")
    covered = synthetic._covered(ImageFont.truetype(str(path), 40), synthetic.GLYPHS)
    assert "A" in covered and "x" in covered and "#" not in covered and "%" not in covered


def test_shapes_include_textured_and_tall_or_wide_things():
    rng = np.random.default_rng(0)
    shapes = [synthetic._shapes(rng) for _ in range(400)]
    textured = aspects = 0
    for shape in shapes:
        ink = shape > 0
        if not ink.any():
            continue
        textured += len(np.unique(shape[ndimage.binary_erosion(ink, iterations=3)])) > 20
        rows, columns = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
        aspect = (columns[-1] - columns[0] + 1) / (rows[-1] - rows[0] + 1)
        aspects += aspect < 0.4 or aspect > 2.5
    assert 0.3 <= textured / len(shapes) <= 0.7  # half are textured
    assert aspects >= 0.1 * len(shapes)


def test_numbers_by_other_writers_are_scanned_and_read_back(digits, monkeypatch):
    """The reader's numbers by other writers: every digit of such a number in the writer's
    condition, the number scanned and prepared back as a person's image is."""
    images, labels = make_digits(200, seed=3)
    plain = synthetic.make_numbers(images, labels, 120, seed=5, max_length=4, workers=1)
    assert not plain.other_writers.any()
    monkeypatch.setattr(augment, "HANDWRITING_CONDITIONS", {"hollow": augment.hollow_strokes})
    hollow = synthetic.make_numbers(
        images, labels, 120, seed=5, max_length=4, workers=1, other_writers_share=1.0
    )
    assert hollow.other_writers.mean() >= 0.95 and not hollow.photographed.any()
    assert all(1 <= len(text) <= 4 for text in hollow.texts)
    assert all((strip > 128).any() for strip in hollow.strips)

    # outlined strokes: per ink column, less solid ink than the same digits written plainly
    def solid(strips: np.ndarray) -> float:
        return float(
            np.mean([(s > 128).sum() / max((s > 32).any(axis=0).sum(), 1) for s in strips])
        )

    assert solid(hollow.strips) < 0.8 * solid(plain.strips)
    mixed = synthetic.make_numbers(
        images, labels, 400, seed=6, max_length=4, workers=1, other_writers_share=0.25
    )
    assert 0.15 < mixed.other_writers.mean() < 0.35


def test_hollow_digits_read_back_are_outlines_prepared_like_a_persons_images():
    """A digit model's extra training digits: outlined strokes, scanned, prepared to 28x28."""
    images, _ = make_digits(300, seed=4)
    one, kept_one = synthetic.hollow_digits_read_back(images, seed=1, workers=1)
    two, kept_two = synthetic.hollow_digits_read_back(images, seed=1, workers=2)
    assert np.array_equal(one, two) and np.array_equal(kept_one, kept_two)  # any workers
    assert one.dtype == np.uint8 and one.shape == (len(kept_one), IMAGE_SIDE, IMAGE_SIDE)
    assert len(kept_one) >= 290 and list(kept_one) == sorted(set(kept_one))
    # each is the digit it came from: its ink lies along the digit's own strokes
    for hollow, index in zip(one[:50], kept_one[:50], strict=True):
        original = preprocess.prepare_image(synthetic.scanned(images[index] / 255))
        near = ndimage.binary_dilation(original > 64, iterations=2)
        assert (near & (hollow > 64)).sum() > 0.8 * (hollow > 64).sum()
    # and outlined: hollow strokes leave ink-free holes where the digit's stroke was solid
    solid = np.mean(
        [
            (d > 128).mean()
            for d in (
                preprocess.prepare_image(synthetic.scanned(images[i] / 255)) for i in kept_one[:50]
            )
        ]
    )
    assert np.mean([(d > 128).mean() for d in one[:50]]) < solid


def test_photographed_digits_read_back_keep_their_labels_place():
    """A digit model's other extra training digits: photographed, prepared back to 28x28; the
    indices say which digit each is, also when one is too faint to find."""
    images, _ = make_digits(40, seed=6)
    images[7] = 0  # a blank page: no digit to find
    one, kept_one = synthetic.photographed_digits(images, seed=2, workers=1)
    two, kept_two = synthetic.photographed_digits(images, seed=2, workers=2)
    assert np.array_equal(one, two) and np.array_equal(kept_one, kept_two)
    assert 7 not in kept_one and len(kept_one) >= 36 and len(one) == len(kept_one)
    for photo, index in zip(one, kept_one, strict=True):  # the same digit, roughly in place
        original = preprocess.prepare_image(synthetic.scanned(images[index] / 255))
        assert np.corrcoef(photo.ravel(), original.ravel())[0, 1] > 0.5


def test_a_style_with_more_touching_gaps_keeps_the_others_proportions(digits):
    style = synthetic.HANDWRITING.with_touching(0.45)
    shares = {name: share for name, share, _, _ in style.gaps}
    assert shares == pytest.approx({"apart": 0.275, "close": 0.275, "touching": 0.45})
    assert [gap[2:] for gap in style.gaps] == [gap[2:] for gap in synthetic.HANDWRITING.gaps]
    # all touching: every neighbour overlaps or touches, so a number is narrower than apart
    images, pools = digits
    touching = synthetic.HANDWRITING.with_touching(1.0)
    widths = [
        ink_columns(synthetic.compose("4096", images, pools, np.random.default_rng(seed), s))
        for seed in range(20)
        for s in (touching, synthetic.HANDWRITING.with_touching(0.0))
    ]
    assert np.mean(widths[0::2]) < np.mean(widths[1::2]) - 6
