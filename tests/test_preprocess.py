"""Each preprocessing step on made images; every format and mode; bad files; MNIST round trips."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays
from PIL import Image
from scipy import ndimage

from conftest import render_digit
from digitlab import preprocess
from digitlab.preprocess import EmptyImageError, ImageError


def paper_digit(digit: int = 3, size: int = 160, seed: int = 0) -> np.ndarray:
    """Dark ink on light paper, the digit off-centre on a larger canvas: (size, size) uint8."""
    rng = np.random.default_rng(seed)
    canvas = np.full((size, size), 230, np.uint8)
    ink = np.array(Image.fromarray(render_digit(digit, rng)).resize((70, 70)))
    canvas[20:90, 60:130] = np.minimum(canvas[20:90, 60:130], 255 - ink)
    return canvas


def png_bytes(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, **options)
    return buffer.getvalue()


# ----------------------------------------------------------------------------- the steps


def test_dark_ink_on_light_paper_is_inverted():
    gray = paper_digit() / 255.0
    flipped = preprocess.ink_polarity(gray)
    assert flipped[0, 0] < 0.2 and flipped.max() > 0.8
    light_on_dark = 1.0 - gray
    assert preprocess.ink_polarity(light_on_dark) is light_on_dark


def test_uneven_lighting_is_flattened():
    gray = preprocess.ink_polarity(paper_digit(size=200) / 255.0)
    gradient = np.linspace(0.0, 0.35, 200)[None, :] + np.linspace(0, 0.15, 200)[:, None] ** 2
    flat = preprocess.flatten_background(gray + gradient)
    background = flat[150:, :]  # below the digit: paper only
    assert abs(background.mean()) < 0.03 and background.std() < 0.03
    assert flat.max() > 0.6  # the ink survives


def test_specks_of_noise_are_dropped_and_the_digit_kept():
    gray = preprocess.ink_polarity(paper_digit(size=200) / 255.0)
    rng = np.random.default_rng(0)
    noisy = gray + rng.normal(0, 0.04, gray.shape)
    noisy[rng.integers(0, 200, 30), rng.integers(0, 200, 30)] = 1.0  # salt
    soft, blobs = preprocess.isolate_ink(preprocess.flatten_background(noisy))
    rows, columns = np.nonzero(blobs)
    assert rows.min() >= 18 and rows.max() <= 92 and columns.min() >= 58 and columns.max() <= 132
    assert soft[150:, :].max() == 0.0


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((60, 60)),
        np.full((60, 60), 200, np.uint8),
        np.random.default_rng(0).normal(128, 4, (80, 80)),
    ],
)
def test_empty_or_noise_only_images_are_reported_not_guessed(image):
    with pytest.raises(EmptyImageError, match="no digit found"):
        preprocess.prepare_image(image)


def test_a_faint_pencil_digit_on_clean_paper_is_found_and_blank_paper_is_not():
    """Ink only 0.08 above the paper (a light pencil, a blurred thin pen) stands far out of a
    clean scan's noise: it is a digit, and the same digit as at full strength."""
    rng = np.random.default_rng(0)
    strong = paper_digit() / 255.0
    paper = strong[0, 0]
    faint = paper - 0.08 * (paper - strong) / (paper - strong.min())  # the ink 0.08 deep
    noise = rng.normal(0, 0.003, faint.shape)
    found = preprocess.prepare_image(faint + noise).astype(float)
    expected = preprocess.prepare_image(strong).astype(float)
    assert np.corrcoef(found.ravel(), expected.ravel())[0, 1] > 0.9
    lit_unevenly = np.linspace(0.0, 0.1, faint.shape[1])[None, :]
    with pytest.raises(EmptyImageError, match="no digit found"):
        preprocess.prepare_image(np.full(faint.shape, paper) + lit_unevenly + noise)


def ballpoint_nine() -> np.ndarray:
    """A ballpoint's 9 on paper: a loop and a tail one pixel wide, ending at row 104."""
    gray = np.full((120, 120), 0.9)
    rows, columns = np.mgrid[0:120, 0:120]
    ring = np.abs(np.hypot(rows - 35, columns - 60) - 12) < 2.5
    gray[ring] = 0.25
    tail = np.arange(47, 105)
    gray[tail, 71 - (tail - 47) // 6] = 0.25  # down and a little to the left
    return gray


def test_a_pen_line_one_pixel_wide_on_clean_paper_is_kept():
    """On clean paper nothing is smoothed, and the tail stays part of the digit to its end."""
    gray = ballpoint_nine()
    soft, blobs = preprocess.isolate_ink(preprocess.flatten_background(1 - gray))
    inked = np.nonzero(blobs)[0]
    assert inked.max() >= 100  # the tail's end
    noisy = gray + np.random.default_rng(0).normal(0, 0.05, gray.shape)
    assert preprocess.paper_noise(noisy) > preprocess.DENOISE_ABOVE > preprocess.paper_noise(gray)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_pen_line_one_pixel_wide_on_noisy_paper_is_kept(seed):
    """On noisy paper (sigma 0.05) the image is smoothed first: the tail survives for most of
    its length (a 3x3 median, which this replaced, erased all of it: ink ended at row 49)."""
    noisy = ballpoint_nine() + np.random.default_rng(seed).normal(0, 0.05, (120, 120))
    soft, blobs = preprocess.isolate_ink(preprocess.flatten_background(1 - noisy))
    assert np.nonzero(blobs)[0].max() >= 85


@settings(max_examples=200, deadline=None)
@given(
    arrays(
        np.float32,
        array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=40),
        elements=st.sampled_from([0.0, 0.25, 0.5, 1.0]) | st.floats(-2, 2, width=32),
    )
)
def test_smoothing_stays_within_the_images_values_at_any_shape(image):
    """Weights that sum to 1, edges reflected: never outside the image's range, the same shape,
    and paper of one level (a scan) left as it is."""
    smooth = preprocess.smooth_3x3(image)
    assert smooth.shape == image.shape
    assert smooth.min() >= image.min() - 1e-5 and smooth.max() <= image.max() + 1e-5
    flat = np.full(image.shape, 0.75, np.float32)
    np.testing.assert_allclose(preprocess.smooth_3x3(flat), flat, rtol=1e-6)


def test_smoothing_keeps_the_level_and_lowers_the_noise():
    rng = np.random.default_rng(3)
    paper = 0.5 + rng.normal(0, 0.1, (200, 200))
    smooth = preprocess.smooth_3x3(paper)
    assert smooth.mean() == pytest.approx(paper.mean(), abs=1e-3)
    assert smooth.std() == pytest.approx(0.375 * paper.std(), rel=0.05)
    line = np.zeros((9, 9))
    line[:, 4] = 1.0
    assert preprocess.smooth_3x3(line)[4, 4] == pytest.approx(0.5)


def test_a_thin_pen_line_is_thickened_like_mnist():
    canvas = np.zeros((300, 300), np.float32)
    canvas[40:260, 148:151] = 1.0  # a 3 px line, 220 px long: a ballpoint "1"
    canvas[40:43, 100:151] = 1.0
    before = preprocess.stroke_thickness(canvas[40:260, 100:151])
    thickened = preprocess.match_stroke(canvas[40:260, 100:151])
    after = preprocess.stroke_thickness(thickened)
    assert before < preprocess.THIN_STROKE
    assert preprocess.THIN_STROKE <= after <= preprocess.THICK_STROKE


def outlined_ring(side: int = 300) -> np.ndarray:
    """A "0" written with a hollow stroke, dark on white: a ring 40 px wide drawn as its two
    edges, each 8 px wide."""
    rows, columns = np.mgrid[0:side, 0:side]
    radius = np.hypot(rows - side / 2, columns - side / 2)
    edges = (np.abs(radius - 110) < 4) | (np.abs(radius - 70) < 4)
    return np.where(edges, 0, 255).astype(np.uint8)


def ink_runs(row: np.ndarray) -> int:
    """How many separate stretches of ink a row of a prepared digit crosses."""
    ink = np.concatenate([[0], (row > 100).astype(int), [0]])
    return int(np.sum(np.diff(ink) == 1))


def test_a_thin_line_is_also_kept_as_written():
    """Thickened to MNIST's stroke, the two edges of an outlined (hollow) stroke merge into one
    thick line; the digit as written keeps them apart, for the digit model to read too."""
    prepared = preprocess.prepare_digit(outlined_ring())
    assert ink_runs(prepared.image[14]) == 2  # each side one thick line
    assert prepared.as_written is not None
    assert ink_runs(prepared.as_written[14]) == 4  # outer edge, inner edge, inner edge, outer edge
    assert np.array_equal(preprocess.prepare_image(outlined_ring()), prepared.image)

    assert preprocess.prepare_digit(paper_digit(3)).as_written is None  # a pen like MNIST's


def test_output_is_a_20px_box_centred_by_mass():
    digit = preprocess.prepare_image(paper_digit(7))
    assert digit.shape == (28, 28) and digit.dtype == np.uint8
    rows, columns = np.nonzero(digit > 20)
    assert max(rows.max() - rows.min(), columns.max() - columns.min()) + 1 in (19, 20, 21)

    centre = ndimage.center_of_mass(digit.astype(float))
    assert abs(centre[0] - 14) <= 1.0 and abs(centre[1] - 14) <= 1.0


def test_a_real_mnist_digit_passes_nearly_unchanged(real_mnist):
    """MNIST is already what preprocessing makes: its digits must come through almost as is."""
    from digitlab import datasets

    _, (x_test, _) = datasets.to_arrays(real_mnist)
    differences = [
        np.abs(preprocess.prepare_image(image).astype(int) - image).mean() for image in x_test[:300]
    ]
    assert np.median(differences) < 8  # of 255, per pixel
    assert np.percentile(differences, 95) < 25


# ------------------------------------------------------------------------ formats, modes


def _as_format(mode: str, fmt: str) -> bytes:
    gray = Image.fromarray(paper_digit(5))
    if mode == "RGB":
        image = Image.merge("RGB", [gray, gray.point(lambda v: v * 0.9), gray])
    elif mode == "RGBA":  # ink opaque, paper transparent
        alpha = gray.point(lambda v: 255 - v)
        image = Image.merge("RGBA", [gray, gray, gray, alpha])
    elif mode == "LA":
        image = Image.merge("LA", [Image.new("L", gray.size, 0), gray.point(lambda v: 255 - v)])
    elif mode == "P":
        image = gray.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    elif mode == "I;16":
        image = Image.fromarray(np.asarray(gray).astype(np.uint16) * 257)
    else:
        image = gray.convert(mode)
    return png_bytes(image, format=fmt)


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [
        ("L", "PNG"),
        ("RGB", "PNG"),
        ("RGBA", "PNG"),
        ("LA", "PNG"),
        ("P", "PNG"),
        ("I;16", "PNG"),
        ("1", "PNG"),
        ("L", "JPEG"),
        ("RGB", "JPEG"),
        ("L", "BMP"),
        ("P", "GIF"),
        ("RGB", "WEBP"),
        ("RGBA", "WEBP"),
        ("L", "TIFF"),
        ("I;16", "TIFF"),
        ("RGB", "TIFF"),
    ],
)
def test_every_format_and_mode_gives_the_same_digit(mode, fmt):
    reference = preprocess.prepare_image(paper_digit(5))
    digit = preprocess.prepare_image(preprocess.decode(_as_format(mode, fmt)))
    assert np.abs(digit.astype(int) - reference.astype(int)).mean() < 20


def test_exif_orientation_is_applied():
    upright = Image.fromarray(paper_digit(7))
    stored = upright.rotate(90, expand=True)  # as a phone stores it, sideways
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    data = png_bytes(stored, format="JPEG", exif=exif, quality=95)
    digit = preprocess.prepare_image(data)
    reference = preprocess.prepare_image(paper_digit(7))
    assert np.abs(digit.astype(int) - reference.astype(int)).mean() < 20


def test_arrays_and_pil_images_are_accepted():
    array = paper_digit(2)
    from_array = preprocess.prepare_image(array)
    np.testing.assert_array_equal(preprocess.prepare_image(Image.fromarray(array)), from_array)
    np.testing.assert_array_equal(preprocess.prepare_image(array / 255.0), from_array)
    with pytest.raises(ImageError, match=r"must be \(H, W\)"):
        preprocess.prepare_image(np.zeros((2, 2, 2, 2)))


# -------------------------------------------------------------------------- bad files


def test_unreadable_truncated_empty_and_huge_files_have_clear_errors(tmp_path, monkeypatch):
    good = _as_format("L", "PNG")
    cases = {
        "garbage.png": b"this is not an image",
        "truncated.png": good[: len(good) // 2],
        "empty.png": b"",
        "truncated.jpg": _as_format("L", "JPEG")[:300],
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    with pytest.raises(ImageError, match="not an image file"):
        preprocess.prepare_image(tmp_path / "garbage.png")
    with pytest.raises(ImageError, match="truncated or corrupt"):
        preprocess.prepare_image(tmp_path / "truncated.png")
    with pytest.raises(ImageError, match="the file is empty"):
        preprocess.prepare_image(tmp_path / "empty.png")
    with pytest.raises(ImageError, match="truncated or corrupt"):
        preprocess.prepare_image(tmp_path / "truncated.jpg")
    with pytest.raises(ImageError, match="No such file"):
        preprocess.prepare_image(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="is a folder"):
        preprocess.prepare_image(tmp_path)
    # A small file that claims to be enormous (a decompression bomb) is refused from its header.
    bomb = png_bytes(Image.new("1", (8000, 8000)), format="PNG")
    assert len(bomb) < 100_000
    with pytest.raises(ImageError, match="too many pixels"):
        preprocess.prepare_image(bomb)
    monkeypatch.setattr(preprocess, "MAX_FILE_BYTES", 1000)
    with pytest.raises(ImageError, match="too large"):
        preprocess.prepare_image(_as_format("RGB", "TIFF"))


# ---------------------------------------------------------------------- written numbers


def test_a_written_number_is_split_into_its_digits_left_to_right():
    rng = np.random.default_rng(3)
    canvas = np.full((120, 420), 240, np.uint8)
    for position, digit in enumerate([2, 0, 2, 6]):
        ink = np.array(Image.fromarray(render_digit(digit, rng)).resize((80, 80)))
        left = 20 + position * 95
        canvas[20:100, left : left + 80] = np.minimum(canvas[20:100, left : left + 80], 255 - ink)
    digits = preprocess.prepare_number(canvas)
    assert len(digits) == 4
    assert [d.box[0] for d in digits] == sorted(d.box[0] for d in digits)
    assert all(d.image.shape == (28, 28) for d in digits)


def test_narrow_ones_close_to_their_neighbours_stay_digits_of_their_own():
    """Full-height strokes a few pixels apart are separate digits: "1111", and a 1 beside an
    8-like ring ("18"), were merged into fewer digits before (issue #11)."""
    canvas = np.full((80, 200), 240, np.uint8)
    for left in (20, 34, 48, 62):  # four ones, 6 px wide, 8 px apart
        canvas[10:70, left : left + 6] = 20
    assert len(preprocess.prepare_number(canvas)) == 4
    ring = np.full((80, 120), 240, np.uint8)
    ring[10:70, 20:26] = 20  # the 1
    ring[10:70, 34:70] = 20  # a full-height digit 8 px to its right
    ring[22:58, 42:62] = 240  # hollowed: a ring
    assert len(preprocess.prepare_number(ring)) == 2


def test_an_open_four_in_two_strokes_is_still_one_digit():
    canvas = np.full((80, 120), 240, np.uint8)
    canvas[10:45, 30:35] = 20  # the left stroke, down to the bar: a part, not a digit
    canvas[40:45, 30:62] = 20  # the bar
    canvas[10:70, 66:71] = 20  # the stem, full height, 4 px to the right of the bar
    assert len(preprocess.prepare_number(canvas)) == 1


def test_many_images_are_prepared_without_forking_a_process_that_runs_jax():
    """After a training (JAX's threads running), workers come from a fork server: JAX warns
    that forking it can deadlock, and no such warning may appear."""
    import warnings

    import jax.numpy as jnp

    float(jnp.ones(3).sum())  # JAX's threads are up
    rng = np.random.default_rng(4)
    sources = [255 - render_digit(int(d), rng, size=56) for d in rng.integers(0, 10, 240)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prepared = preprocess.prepare_many(sources, workers=2)
    assert not [warning for warning in caught if "fork" in str(warning.message)]
    expected = [preprocess.prepare_image(source) for source in sources[:20]]
    for got, want in zip(prepared, expected, strict=False):
        np.testing.assert_array_equal(got, want)
    assert len(prepared) == len(sources)
