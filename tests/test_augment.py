"""Augmentation against SciPy's affine transform, and what training needs from it."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage

from digitlab.augment import Augmentation, augment, transform


def scipy_reference(image, rotation_degrees, scale, shift):
    """The same rotation, scale and shift with scipy.ndimage, which maps output -> input."""
    angle = np.deg2rad(rotation_degrees)
    cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
    matrix = np.array([[cos, sin], [-sin, cos]])  # on (row, column) coordinates
    centre = (np.array(image.shape) - 1) / 2
    offset = centre - matrix @ (centre + np.asarray(shift)[::-1])
    moved = scipy.ndimage.affine_transform(
        image.astype(np.float64), matrix, offset, order=1, mode="grid-constant", cval=0.0
    )
    return moved / 255


def test_transform_matches_scipy():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (4, 28, 28), dtype=np.uint8)
    rotations = np.array([0.0, 20.0, -35.0, 180.0])
    scales = np.array([1.0, 1.2, 0.8, 0.5])  # 0.5: much of the output comes from outside
    shifts = np.array([[0, 0], [2.5, -1.5], [-3, 4], [10, 0]])
    out = transform(images, rotations, scales, shifts)
    assert out.dtype == np.float32 and out.shape == images.shape
    for index in range(len(images)):
        expected = scipy_reference(images[index], rotations[index], scales[index], shifts[index])
        np.testing.assert_allclose(out[index], expected, atol=1e-5)


def test_rotation_is_anticlockwise_on_screen_and_shift_is_x_then_y():
    dot = np.zeros((1, 28, 28), np.uint8)
    dot[0, 14, 24] = 255  # right of the centre
    rotated = transform(dot, np.array([90.0]), np.array([1.0]), np.zeros((1, 2)))
    assert np.unravel_index(rotated[0].argmax(), (28, 28)) == (3, 14)  # above it
    shifted = transform(dot, np.zeros(1), np.ones(1), np.array([[-4.0, 2.0]]))
    assert np.unravel_index(shifted[0].argmax(), (28, 28)) == (16, 20)


def test_no_change_asked_is_no_change():
    images = np.random.default_rng(3).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    out = augment(images, np.random.default_rng(0), Augmentation(0.0, 0.0, 0.0))
    np.testing.assert_allclose(out, images / 255, atol=1e-6)


def test_augment_is_seeded_different_per_image_and_within_its_limits():
    digit = np.zeros((28, 28), np.uint8)
    digit[8:20, 12:16] = 255  # a thick "1"
    images = np.repeat(digit[None], 600, axis=0)  # more than one chunk
    limits = Augmentation(max_rotation_degrees=10, max_scale_change=0.1, max_shift_pixels=2)
    first = augment(images, np.random.default_rng(7), limits)
    again = augment(images, np.random.default_rng(7), limits)
    np.testing.assert_array_equal(first, again)
    assert len({copy.tobytes() for copy in first}) == len(images)  # every copy its own
    assert first.min() >= 0 and first.max() <= 1
    # Ink mass changes by the area factor (scale squared) at most; the centre of mass moves
    # by the shift at most (rotation and scale are about the image centre, near the digit's).
    ink = first.sum(axis=(1, 2)) / (digit.sum() / 255)
    assert ink.min() > 0.8**2 and ink.max() < 1.2**2
    rows, columns = np.mgrid[0:28, 0:28]
    centre_row = (first * rows).sum(axis=(1, 2)) / first.sum(axis=(1, 2))
    centre_column = (first * columns).sum(axis=(1, 2)) / first.sum(axis=(1, 2))
    assert np.abs(centre_row - 13.5).max() < 2.0 + 0.3
    assert np.abs(centre_column - 13.5).max() < 2.0 + 0.3
    assert np.abs(centre_column - 13.5).max() > 1.0  # shifts do happen


def test_an_empty_batch_gives_an_empty_batch():
    out = augment(np.zeros((0, 28, 28), np.uint8), np.random.default_rng(0))
    assert out.shape == (0, 28, 28) and out.dtype == np.float32


@pytest.mark.parametrize("count", [1, 512, 513])
def test_chunk_edges(count):
    images = np.full((count, 28, 28), 255, np.uint8)
    out = augment(images, np.random.default_rng(0), Augmentation(0.0, 0.0, 0.0))
    assert out.shape == (count, 28, 28) and np.all(out == 1.0)
