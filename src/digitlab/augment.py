"""Data augmentation for training: each digit slightly shifted, rotated and rescaled, anew for
every batch, so a model learns that a digit is the same digit a little off-centre or askew, as
people's own images are.

It runs in NumPy, outside the model: Keras' random-transform layers made a small CNN about twice
as slow per epoch on TensorFlow (docs/performance.md), and here one epoch of 60,000 digits costs
about 1.4 s on one core.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from digitlab.config import IMAGE_SIDE

CHUNK = 512  # digits per vectorised step: the gathers stay in cache (60,000 at once: 5x slower)


@dataclass(frozen=True)
class Augmentation:
    # Measured on the CNN: 12 degrees, 10% and 2.5 px made it underfit (99.40% at 12 epochs);
    # these gave 99.47%.
    max_rotation_degrees: float = 10.0  # either way
    max_scale_change: float = 0.08  # 0.92x to 1.08x: MNIST digits are normalised to ~20 px
    max_shift_pixels: float = 2.0  # each axis: MNIST centres the mass within about that


def augment(
    images: np.ndarray, rng: np.random.Generator, augmentation: Augmentation = Augmentation()
) -> np.ndarray:
    """Random affine copies of ``images`` (uniform rotation, scale and shift per image).

    (N, H, W) uint8 -> (N, H, W) float32 in [0, 1], ready for a model.
    """
    images = np.asarray(images)
    count = len(images)
    rotation_degrees = rng.uniform(-1, 1, count) * augmentation.max_rotation_degrees
    scale = 1 + rng.uniform(-1, 1, count) * augmentation.max_scale_change
    shift = rng.uniform(-1, 1, (count, 2)) * augmentation.max_shift_pixels
    pieces = [
        transform(images[part], rotation_degrees[part], scale[part], shift[part])
        for part in (slice(start, start + CHUNK) for start in range(0, count, CHUNK))
    ]
    return np.concatenate(pieces) if pieces else np.zeros(images.shape, np.float32)


def transform(
    images: np.ndarray, rotation_degrees: np.ndarray, scale: np.ndarray, shift: np.ndarray
) -> np.ndarray:
    """Rotate (anticlockwise on screen), scale about the centre, then shift (x, y) each image.

    Bilinear, black (0) outside the original. (N, H, W) uint8 and (N,), (N,), (N, 2) parameters
    -> (N, H, W) float32 in [0, 1].
    """
    count, height, width = images.shape

    # Per-image parameters as (N, 1, 1) so they broadcast over the (H, W) pixel grid.
    def per_image(values: np.ndarray) -> np.ndarray:
        return np.asarray(values, dtype=np.float32).reshape(count, 1, 1)

    angle = np.deg2rad(rotation_degrees)
    cos, sin = per_image(np.cos(angle) / scale), per_image(np.sin(angle) / scale)
    centre_y, centre_x = (height - 1) / 2, (width - 1) / 2
    grid_y, grid_x = np.mgrid[0:height, 0:width].astype(np.float32)
    # Inverse mapping: for each output pixel, the point of the input it comes from.
    from_centre_x = grid_x - centre_x - per_image(shift[:, 0])
    from_centre_y = grid_y - centre_y - per_image(shift[:, 1])
    # +1: coordinates in the image padded with one black pixel on each side
    source_x = cos * from_centre_x - sin * from_centre_y + centre_x + 1
    source_y = sin * from_centre_x + cos * from_centre_y + centre_y + 1

    # One black pixel before each row and column, two after: a clipped coordinate then reads
    # only black, and its right and bottom neighbours stay inside the array.
    padded_width = width + 3
    padded = np.zeros((count, height + 3, padded_width), np.float32)
    padded[:, 1 : height + 1, 1 : width + 1] = images
    flat = padded.reshape(-1)
    source_x = np.clip(source_x, 0, width + 1)
    source_y = np.clip(source_y, 0, height + 1)
    left, top = np.floor(source_x), np.floor(source_y)
    weight_x, weight_y = source_x - left, source_y - top  # float32: an int operand makes float64
    image_start = (np.arange(count) * padded.shape[1] * padded_width)[:, None, None]
    top_left = image_start + top.astype(np.intp) * padded_width + left.astype(np.intp)
    bottom_left = top_left + padded_width
    upper = flat[top_left] * (1 - weight_x) + flat[top_left + 1] * weight_x
    lower = flat[bottom_left] * (1 - weight_x) + flat[bottom_left + 1] * weight_x
    return (upper * (1 - weight_y) + lower * weight_y) * np.float32(1 / 255)


# ------------------------------------------------- how other people's handwriting differs
# Each turns one digit, (28, 28) float in [0, 1] light on dark, into how another writer, pen or
# scanner would have given it. Training applies one to a share of the digits of each batch;
# benchmarks/robustness.py measures each on MNIST's test digits, separately.


def _stretch(image: np.ndarray) -> np.ndarray:
    """Ink back to full strength, as preprocessing does for a faint or blurred digit."""
    top = float(image.max())
    return image / top if top > 0 else image


def low_resolution(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Scanned small: the digit 8-16 px tall (MNIST's are 20), then enlarged back."""
    height = rng.uniform(8, 16)
    side = max(2, round(IMAGE_SIDE * height / 20))
    small = Image.fromarray(image, "F").resize((side, side), Image.Resampling.BOX)
    return np.asarray(small.resize((IMAGE_SIDE, IMAGE_SIDE), Image.Resampling.BILINEAR))


def heavy_blur(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return _stretch(ndimage.gaussian_filter(image, rng.uniform(1.0, 1.8)))


def thick_marker(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return ndimage.grey_dilation(image, size=(3, 3) if rng.random() < 0.5 else (2, 2))


def thin_pen(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A ballpoint: the stroke about a pixel wide, the line kept where erosion would cut it."""
    thinned = ndimage.grey_erosion(image, size=(2, 2))
    return np.maximum(thinned, image * (image > 0.85) * 0.6)


def slant(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Leaning right or left by 10-25 degrees (a shear about the centre)."""
    shear = np.tan(np.deg2rad(rng.uniform(10, 25))) * rng.choice([-1, 1])
    centre = (IMAGE_SIDE - 1) / 2
    # output (row, column) reads input (row, column + shear * (row - centre))
    return ndimage.affine_transform(
        image, np.array([[1.0, 0.0], [shear, 1.0]]), offset=(0.0, -shear * centre), order=1
    )


def elastic(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Simard et al.'s elastic distortion: a smooth random displacement field (sigma 4 px,
    up to ~2.5 px of movement), the wobble of a different hand."""
    fields = [
        ndimage.gaussian_filter(rng.uniform(-1, 1, image.shape), 4.0) * rng.uniform(20, 34)
        for _ in range(2)
    ]
    rows, columns = np.mgrid[0:IMAGE_SIDE, 0:IMAGE_SIDE].astype(np.float32)
    return ndimage.map_coordinates(image, [rows + fields[0], columns + fields[1]], order=1)


def broken_strokes(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A dry pen or a faint scan: 2-4 short gaps cut across the strokes."""
    broken = image.copy()
    ink = np.argwhere(image > 0.5)
    if len(ink) == 0:
        return broken
    for row, column in ink[rng.choice(len(ink), size=int(rng.integers(2, 5)))]:
        broken[max(row - 1, 0) : row + 1, max(column - 1, 0) : column + 1] = 0
    return broken


def hollow_strokes(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Outlined strokes (a bubble font, a traced digit): the stroke's edges without its inside."""
    thick = ndimage.grey_dilation(image, size=(3, 3))
    inside = ndimage.grey_erosion(thick, size=(3, 3) if rng.random() < 0.5 else (2, 2))
    return np.clip(thick - inside, 0, 1)


HANDWRITING_CONDITIONS = {
    "low_resolution": low_resolution,
    "heavy_blur": heavy_blur,
    "thick_marker": thick_marker,
    "thin_pen": thin_pen,
    "slant": slant,
    "elastic": elastic,
    "broken_strokes": broken_strokes,
    "hollow_strokes": hollow_strokes,
}


def other_handwriting(
    images: np.ndarray, rng: np.random.Generator, share: float = 0.5
) -> np.ndarray:
    """``share`` of the digits each given one of HANDWRITING_CONDITIONS, chosen at random.

    (N, 28, 28) float32 in [0, 1] -> the same, changed in place and returned.
    """
    conditions = list(HANDWRITING_CONDITIONS.values())
    for index in np.flatnonzero(rng.random(len(images)) < share):
        condition = conditions[int(rng.integers(len(conditions)))]
        images[index] = np.clip(condition(images[index], rng), 0, 1)
    return images
