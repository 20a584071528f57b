"""A person's image -> a 28x28 digit prepared the way MNIST's makers prepared theirs.

MNIST digits are light ink on black, the ink's longer side scaled to 20 px (aspect kept,
anti-aliased) and placed in 28x28 so that the centre of mass is at the centre. A photo or a scan
is nothing like that: dark ink on light paper, a large canvas, uneven light, noise, a thin pen.
``prepare_image`` undoes each of those, step by step; ``prepare_number`` first splits a written
number into its digits. Both are used by the CLI, the Python API and the web service.
"""

from __future__ import annotations

import functools
import io
import os
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from scipy import ndimage

from digitlab import DigitlabError
from digitlab.config import IMAGE_SIDE, STRIP_MARGIN, STRIP_WIDTH

MNIST_BOX = 20  # MNIST's makers scaled each digit's longer side to 20 px
WORKING_MAX_SIDE = 512  # larger images are reduced first: enough for any pen line, and fast
STROKE_CANVAS = 80  # stroke thickness is measured and adjusted with the digit at this size
# Stroke thickness relative to the digit's longer side, measured on 2,000 MNIST test digits
# as 2 * ink area / ink perimeter: median 0.13, 10th-90th percentile 0.105-0.18.
MNIST_STROKE = 0.13
THIN_STROKE = 0.10  # thinner than this (a ballpoint in a photo) is thickened to MNIST_STROKE
THICK_STROKE = 0.24  # thicker than this (a marker) is thinned back to it: a just-too-thick
# stroke changes just a little, so the output does not jump at the threshold
# Ink brighter than the background by less than this (0-1 scale), or by less than 8 times the
# paper's noise: empty. 0.06, not the 0.12 it was: faint pencil and blurred thin pens on clean
# paper (ink 0.07-0.12 above it, noise under 0.006) were called blank; blank photos with noise,
# uneven light, blur and JPEG stay blank (none of 400 made ones has a digit found).
MIN_CONTRAST = 0.06
# Paper noisier than this (robust sigma, 0-1 scale) is smoothed (``smooth_3x3``) before the ink
# is found; cleaner paper is left as it is.
DENOISE_ABOVE = 0.02
MIN_INK_FRACTION = 0.0004  # of the image's pixels; fewer: nothing written there
SPECK_FRACTION = 0.04  # ink blobs smaller than this fraction of the largest are noise
MAX_FILE_BYTES = 20 * 1024 * 1024  # larger files are refused before decoding
# Larger images are refused from their header, before decoding: 25 M pixels is a 24-megapixel
# camera's photo, and decoding one costs up to ~0.5 GB on the way to grayscale.
MAX_PIXELS = 25_000_000
# The formats digitlab opens. Pillow otherwise picks a decoder by content, and some run
# programs (EPS bytes go to Ghostscript) or have a long record of decoder bugs.
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF", "PPM", "AVIF")  # JPEG covers MPO


# What a folder's images are called (other files in it are not read)
IMAGE_SUFFIXES = {
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".gif",
    ".webp",
    ".tif",
    ".tiff",
    ".pgm",
    ".ppm",
    ".pbm",
    ".avif",
}


class ImageError(DigitlabError):
    """An image that cannot be read: ``reason`` says why, ``source`` names it (a path,
    ``-`` for standard input, a form field), or is None when the caller names it."""

    def __init__(self, reason: str, source: str | None = None):
        super().__init__(f"{source}: {reason}" if source else reason)
        self.reason, self.source = reason, source

    def __reduce__(self):  # keep both fields across processes (prepare_many)
        return type(self), (self.reason, self.source)

    def naming(self, source: str | None) -> ImageError:
        """The same error, naming ``source`` (unless it already names one)."""
        if self.source is not None or source is None:
            return self
        return type(self)(self.reason, source)


class EmptyImageError(ImageError):
    """An image with no digit in it (blank, or too faint to tell)."""


@dataclass
class PreparedDigit:
    image: np.ndarray  # (28, 28) uint8, light ink on black, like MNIST
    box: tuple[int, int, int, int]  # where the digit was: left, top, right, bottom (source px)
    # A thin line's digit also as written, its stroke not thickened (None: it was not thin).
    # A thin line may be a thin pen or the outline of a hollow stroke; thickened, an outline's
    # inside fills and the loops of its 9s and 6s close, so a digit model reads both
    # (``Predictor.digit_probabilities``).
    as_written: np.ndarray | None = None

    @property
    def centre_x(self) -> float:
        return (self.box[0] + self.box[2]) / 2


@dataclass
class PreparedStrip:
    image: np.ndarray  # (28, 224) uint8: the number, light ink on black, left-aligned
    ink_width: int  # strip columns the number's ink fills, from STRIP_MARGIN on
    ink_left: float = 0.0  # where the number's ink starts and ends in the source image (px)
    ink_right: float = 0.0
    # The same ink cut into blob groups (``prepare_number``'s digits), for a digit model to
    # check the reader's reading of each group that holds one digit
    digits: list[PreparedDigit] = field(default_factory=list)
    # The same ink WIDENED times as wide (its own strip; its blob groups where they were,
    # each digit widened too: ``widened_digit``), for a second reading of a narrow hand
    # (``Predictor.read_strips``); None: not made
    widened: PreparedStrip | None = None

    @property
    def ink_height(self) -> int:
        """Rows of the strip the number's ink spans (20 but for a number too long to fit)."""
        rows = np.flatnonzero(self.image.max(axis=1))
        return int(rows[-1] - rows[0] + 1) if len(rows) else 0

    def source_x(self, strip_x: float) -> float:
        """A column of the strip -> the x-coordinate in the source image it came from."""
        fraction = (strip_x - STRIP_MARGIN) / max(self.ink_width, 1)
        return self.ink_left + fraction * (self.ink_right - self.ink_left)


# ------------------------------------------------------------------------------ decoding


def _composite_alpha(rgba: Image.Image) -> Image.Image:
    """Flatten transparency over a background that contrasts with the visible ink."""
    pixels = np.asarray(rgba, dtype=np.float32)
    alpha = pixels[..., 3] / 255.0
    gray = pixels[..., :3].mean(axis=2)
    opaque = alpha > 0.5
    if opaque.all() or not opaque.any():
        return rgba.convert("RGB")
    ink_is_dark = gray[opaque].mean() < 128
    background = 255.0 if ink_is_dark else 0.0
    flat = pixels[..., :3] * alpha[..., None] + background * (1 - alpha[..., None])
    return Image.fromarray(flat.astype(np.uint8), "RGB")


def to_grayscale(image: Image.Image) -> np.ndarray:
    """Any PIL image (any mode, EXIF-rotated, first frame) -> (H, W) float32 in [0, 1]."""
    # Only an image with EXIF data can ask to be rotated; most have none, and reading EXIF
    # costs more than the rest of decoding a small PNG.
    if image.info.get("exif") or image.format == "TIFF":
        image = ImageOps.exif_transpose(image) or image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.nan_to_num(np.asarray(image, dtype=np.float32), posinf=0.0, neginf=0.0)
        top = 65535.0 if values.max(initial=0) > 255 or image.mode.startswith("I;16") else 255.0
        if image.mode == "F" and values.max(initial=0) <= 1.0:
            top = 1.0
        return np.clip(values / top, 0.0, 1.0)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = _composite_alpha(image.convert("RGBA"))
    return np.asarray(image.convert("L"), dtype=np.float32) / 255.0


def decode(data: bytes) -> np.ndarray:
    """Image file bytes (PNG, JPEG, BMP, GIF, WebP, TIFF, ...) -> (H, W) float32 in [0, 1]."""
    if len(data) > MAX_FILE_BYTES:
        raise ImageError(
            f"{len(data) / 2**20:.1f} MiB is too large (at most {MAX_FILE_BYTES // 2**20} MiB)"
        )
    if not data:
        raise ImageError("the file is empty")
    # Pillow warns about odd files (truncated EXIF, a large image); the answer says it all.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with _open(data) as image:
                if image.width * image.height > MAX_PIXELS:
                    raise ImageError(
                        f"{image.width}x{image.height} is too many pixels (at most {MAX_PIXELS:,})"
                    )
                image.seek(0)
                image.load()
                return to_grayscale(image)
        except UnidentifiedImageError:
            raise ImageError(
                "not an image file digitlab can read (PNG, JPEG, BMP, GIF, WebP, TIFF, PNM, AVIF)"
            ) from None
        except Image.DecompressionBombError:
            raise ImageError(f"too many pixels (at most {MAX_PIXELS:,})") from None
        except (OSError, ValueError, SyntaxError, EOFError) as error:
            raise ImageError(f"truncated or corrupt image ({error})") from None


def _open(data: bytes) -> Image.Image:
    """Open ``data`` with the plugins of FORMATS only.

    PNG, JPEG, BMP, GIF and PNM plugins are loaded by Pillow from the start; the others are
    imported one by one on the first file those do not open (``Image.init()`` would import all
    ~40 of Pillow's, ~50 ms of a cold ``digitlab predict``).
    """
    Image.preinit()
    try:
        return Image.open(io.BytesIO(data), formats=_loaded_formats())
    except UnidentifiedImageError:
        if not _load_plugins():
            raise
        return Image.open(io.BytesIO(data), formats=_loaded_formats())


def _loaded_formats() -> tuple[str, ...]:
    return tuple(name for name in FORMATS if name in Image.OPEN)


@functools.cache
def _load_plugins() -> bool:
    """Import the plugins of FORMATS (those this Pillow build has); True if any were new."""
    import importlib

    before = _loaded_formats()
    for plugin in ("WebP", "Tiff", "Avif"):
        try:
            importlib.import_module(f"PIL.{plugin}ImagePlugin")
        except ImportError:  # AVIF came with Pillow 11.2
            continue
    return _loaded_formats() != before


def read_file(path: Path, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes, else ImageError.

    A FIFO, a device (``/dev/zero``) or a socket is refused without being read; the read
    itself stops at ``limit``, whatever ``stat`` said.
    """
    try:
        status = os.stat(path)
        if stat.S_ISDIR(status.st_mode):
            raise ImageError("is a folder, not an image")
        if not stat.S_ISREG(status.st_mode):
            raise ImageError("is not a regular file (a pipe, a device or a socket)")
        if status.st_size > limit:
            raise ImageError(
                f"{status.st_size / 2**20:.1f} MiB is too large (at most {limit // 2**20} MiB)"
            )
        with open(path, "rb") as handle:
            # read(n) reserves n bytes first: ask for what stat promised, then for any more
            data = handle.read(status.st_size + 1)
            if len(data) > status.st_size:  # it grew, or stat could not tell (procfs)
                data += handle.read(limit + 1 - len(data))
    except OSError as error:
        raise ImageError(error.strerror or str(error)) from None
    if len(data) > limit:
        raise ImageError(f"over {limit // 2**20} MiB: too large")
    return data


def load(source: str | Path | bytes | Image.Image | np.ndarray) -> np.ndarray:
    """A path, file bytes, a PIL image or an array -> (H, W) float32 in [0, 1]."""
    if isinstance(source, Image.Image):
        return to_grayscale(source)
    if isinstance(source, np.ndarray):
        array = np.asarray(source)
        if array.ndim == 3 and array.shape[2] in (3, 4):
            return to_grayscale(Image.fromarray(array.astype(np.uint8)))
        if array.ndim != 2 or array.size == 0:
            raise ImageError(f"an image array must be (H, W) or (H, W, 3|4), not {array.shape}")
        array = np.nan_to_num(array.astype(np.float32), posinf=0.0, neginf=0.0)
        if source.dtype == np.uint8 or array.max(initial=0) > 1.0:
            return np.clip(array / 255.0, 0.0, 1.0)
        return np.clip(array, 0.0, 1.0)
    if isinstance(source, bytes):
        return decode(source)
    return decode(read_file(Path(source)))


def source_name(source) -> str | None:
    """How an error names ``source``: its path; None for bytes, images and arrays."""
    return str(source) if isinstance(source, str | Path) else None


# ------------------------------------------------------------------------------- the steps


def _quantile(values: np.ndarray, fraction: float) -> float:
    """The value at ``fraction`` of the sorted values (nearest rank).

    np.median and np.percentile cost ~30 us each in overhead alone; on a 28x28 image that is
    most of their time, and preprocessing calls them a dozen times. np.sort, not np.partition:
    a scan's paper is tens of thousands of equal values, on which partitioning slows to 1-3 ms
    (55,000 pixels, measured) while sorting takes 0.07 ms (0.5 ms for all-different values).
    """
    flat = values.ravel()
    rank = min(int(fraction * flat.size), flat.size - 1)
    return float(np.sort(flat)[rank])


def reduce_size(gray: np.ndarray, max_side: int = WORKING_MAX_SIDE) -> np.ndarray:
    """Shrink by box-averaging so the longer side is at most ``max_side`` (ink mass is kept)."""
    factor = int(np.ceil(max(gray.shape) / max_side))
    if factor <= 1:
        return gray
    height, width = (gray.shape[0] // factor) * factor, (gray.shape[1] // factor) * factor
    trimmed = gray[:height, :width]
    return trimmed.reshape(height // factor, factor, width // factor, factor).mean(axis=(1, 3))


def ink_polarity(gray: np.ndarray) -> np.ndarray:
    """Make ink bright on a dark background.

    Paper is what fills the image's border; ink is the minority that stands out from it, on the
    darker side (pen on paper) or the lighter side (chalk, a screen). Comparing the two tails
    works for dim paper too, where a fixed 0.5 cut-off fails.
    """
    border = max(1, min(gray.shape) // 20)
    frame = np.concatenate(
        [
            gray[:border].ravel(),
            gray[-border:].ravel(),
            gray[:, :border].ravel(),
            gray[:, -border:].ravel(),
        ]
    )
    paper = _quantile(frame, 0.5)
    flat = gray.ravel()
    low, high = int(0.001 * flat.size), min(int(0.999 * flat.size), flat.size - 1)
    ordered = np.partition(flat, (low, high))
    darkest, lightest = ordered[low], ordered[high]
    return 1.0 - gray if paper - darkest > lightest - paper else gray


def flatten_background(gray: np.ndarray) -> np.ndarray:
    """Subtract a smooth background (a quadratic surface fitted to the paper, not the ink).

    Uneven lighting in a photo is a slow gradient or vignette; the fit ignores the ink by
    refitting to the pixels that lie at or below the surface.
    """
    height, width = gray.shape
    border = max(1, min(height, width) // 20)
    sides = [gray[:border], gray[-border:], gray[:, :border], gray[:, -border:]]
    levels = [_quantile(side, 0.5) for side in sides]
    if max(levels) - min(levels) < 0.02:  # evenly lit (a scan, a screen drawing, MNIST): no fit
        return gray - sorted(levels)[2]
    step = max(1, max(height, width) // 64)
    ys, xs = np.mgrid[0:height:step, 0:width:step]
    values = gray[::step, ::step].ravel()
    y, x = ys.ravel() / height - 0.5, xs.ravel() / width - 0.5
    design = np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], axis=1)
    keep = values <= np.median(values)  # ink covers well under half of any digit image
    for _ in range(4):
        coefficients, *_ = np.linalg.lstsq(design[keep], values[keep], rcond=None)
        residual = values - design @ coefficients
        spread = 1.4826 * np.median(np.abs(residual[keep] - np.median(residual[keep])))
        keep = residual < np.median(residual[keep]) + 2.5 * max(spread, 0.01)
        if keep.sum() < design.shape[1] * 4:
            break
    full_y, full_x = np.mgrid[0:height, 0:width]
    fy, fx = full_y / height - 0.5, full_x / width - 0.5
    surface = (
        coefficients[0]
        + coefficients[1] * fx
        + coefficients[2] * fy
        + coefficients[3] * fx * fx
        + coefficients[4] * fx * fy
        + coefficients[5] * fy * fy
    )
    return gray - surface


def _otsu_threshold(values: np.ndarray) -> float:
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return low
    bins = 128
    # np.bincount on quantised values: the same histogram as np.histogram, several times faster
    quantised = np.minimum(((values - low) * (bins / (high - low))).astype(np.intp), bins - 1)
    histogram = np.bincount(quantised.ravel(), minlength=bins)
    centres = low + (np.arange(bins) + 0.5) * ((high - low) / bins)
    weight_low = np.cumsum(histogram)
    weight_high = weight_low[-1] - weight_low
    mean_low = np.cumsum(histogram * centres) / np.maximum(weight_low, 1)
    total = (histogram * centres).sum()
    mean_high = (total - np.cumsum(histogram * centres)) / np.maximum(weight_high, 1)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return float(centres[np.argmax(between)])


BINOMIAL_3 = (0.25, 0.5, 0.25)


def smooth_3x3(image: np.ndarray) -> np.ndarray:
    """The 3x3 binomial filter ([1 2 1] / 4 down and across): the paper's noise falls to 0.375
    of its sigma and a pen line a pixel wide keeps half its depth. (A 3x3 median, used before,
    erased such lines on noisy paper: measured on benchmarks/not_a_digit.py's 2,000
    photographed digits, 26 called "not a digit" with it, 23 with this.)"""
    across = ndimage.correlate1d(image, BINOMIAL_3, axis=1, mode="reflect")
    return ndimage.correlate1d(across, BINOMIAL_3, axis=0, mode="reflect")


def _level_and_noise(values: np.ndarray) -> tuple[float, float]:
    """The median, and 1.4826 times the median absolute deviation from it: a robust sigma,
    which ink (well under half of the pixels) does not move."""
    level = _quantile(values, 0.5)
    return level, 1.4826 * _quantile(np.abs(values - level), 0.5)


def paper_noise(image: np.ndarray) -> float:
    """The paper's noise, from every 4th pixel each way (a full sort cost ~1.5 ms on a
    written number)."""
    return _level_and_noise(image[::4, ::4])[1]


def isolate_ink(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Denoise and keep the ink: (soft ink in [0, 1], labelled ink blobs), or EmptyImageError."""
    noisy = min(flat.shape) >= 32 and paper_noise(flat) >= DENOISE_ABOVE
    smooth = smooth_3x3(flat) if noisy else flat
    threshold = _otsu_threshold(smooth)
    background, ink = smooth[smooth <= threshold], smooth[smooth > threshold]
    if ink.size == 0 or background.size == 0:
        raise EmptyImageError("no digit found: the image is blank")
    paper, noise = _level_and_noise(background)
    ink_level = _quantile(ink, 0.9)
    if ink_level - paper < max(MIN_CONTRAST, 8 * noise):
        raise EmptyImageError("no digit found: the image is blank or too faint")
    threshold = max(threshold, paper + 4 * noise, paper + 0.25 * (ink_level - paper))
    mask = smooth > threshold
    labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
    if count == 0:
        raise EmptyImageError("no digit found: the image is blank or too faint")
    areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]  # pixels per blob
    keep = np.concatenate([[False], areas >= SPECK_FRACTION * areas.max()])
    kept = keep[labels]
    if kept.sum() < max(4, MIN_INK_FRACTION * flat.size):
        raise EmptyImageError("no digit found: only specks of ink")
    # Soft edges (anti-aliasing) near kept strokes survive; everything away from them is zeroed.
    near = ndimage.maximum_filter(kept, size=5)
    low = paper + 0.5 * (threshold - paper)
    soft = np.clip((smooth - low) / max(ink_level - low, 1e-6), 0.0, 1.0) * near
    renumber = np.cumsum(keep) * keep  # kept blobs numbered 1, 2, ...; dropped ones 0
    return soft.astype(np.float32), renumber[labels]


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    resized = Image.fromarray(image.astype(np.float32), "F").resize(
        (max(1, width), max(1, height)), Image.Resampling.LANCZOS
    )
    return np.clip(np.asarray(resized), 0.0, 1.0)


def _scale_longer_side(image: np.ndarray, side: int) -> np.ndarray:
    height, width = image.shape
    scale = side / max(height, width)
    return _resize(image, round(width * scale), round(height * scale))


def _crop_to_ink(image: np.ndarray, level: float = 0.05) -> np.ndarray:
    rows, columns = np.nonzero(image > level)
    return image[rows.min() : rows.max() + 1, columns.min() : columns.max() + 1]


def stroke_thickness(image: np.ndarray, side: int | None = None) -> float:
    """Stroke width relative to ``side`` (default: the longer side): 2 * ink area / ink
    perimeter / side."""
    mask = image > 0.5
    area = mask.sum()
    if area == 0:
        return 0.0
    perimeter = (mask & ~ndimage.binary_erosion(mask)).sum()
    return float(2 * area / max(perimeter, 1) / (side or max(image.shape)))


def _disc(radius: int) -> np.ndarray:
    y, x = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return x * x + y * y <= radius * radius + radius


def _scale_height(image: np.ndarray, height: int) -> np.ndarray:
    scale = height / image.shape[0]
    return _resize(image, round(image.shape[1] * scale), height)


def _at_stroke_canvas(image: np.ndarray, by_height: bool = False) -> np.ndarray:
    if by_height:
        return _scale_height(image, STROKE_CANVAS)
    return _scale_longer_side(image, STROKE_CANVAS)


def _relative_stroke(digit: np.ndarray, by_height: bool = False) -> float:
    """The stroke's width against the digit's longer side (or its height), measured at 80 px."""
    side = digit.shape[0] if by_height else max(digit.shape)
    measured = digit if side <= STROKE_CANVAS else _at_stroke_canvas(digit, by_height)
    return stroke_thickness(measured, measured.shape[0] if by_height else None)


def match_stroke(digit: np.ndarray, by_height: bool = False) -> np.ndarray:
    """Thicken a thin pen line (or thin a marker) towards MNIST's stroke, at 80 px.

    The stroke is measured against the digit's longer side, or with ``by_height`` against its
    height (a whole written number, where the longer side is its width). A digit already within
    MNIST's range of stroke widths is returned as it is.
    """
    return stroke_views(digit, by_height)[0]


def stroke_views(
    digit: np.ndarray, by_height: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """``match_stroke``'s digit, and the digit as written where its thin line was thickened
    (at 80 px, as it would have been thickened; None otherwise): the stroke measured once."""
    relative = _relative_stroke(digit, by_height)
    if THIN_STROKE <= relative <= THICK_STROKE:
        return digit, None
    canvas = np.pad(_at_stroke_canvas(digit, by_height), STROKE_CANVAS // 4)
    if relative < THIN_STROKE:
        # Dilating by r widens the stroke by 2r and the digit's box by 2r too.
        width = relative * STROKE_CANVAS
        radius = int(np.ceil((MNIST_STROKE * STROKE_CANVAS - width) / (2 * (1 - MNIST_STROKE))))
        thick = ndimage.grey_dilation(canvas, footprint=_disc(radius)) if radius > 0 else canvas
        return _crop_to_ink(thick), _crop_to_ink(canvas)
    radius = round((relative - THICK_STROKE) * STROKE_CANVAS / 2)
    thinned = ndimage.grey_erosion(canvas, footprint=_disc(radius)) if radius > 0 else canvas
    canvas = thinned if (thinned > 0.5).sum() > 0.2 * (canvas > 0.5).sum() else canvas
    return _crop_to_ink(canvas), None


def centre_by_mass(digit: np.ndarray) -> np.ndarray:
    """Scale the longer side to 20 px and place it in 28x28 with its centre of mass centred."""
    box = _scale_longer_side(digit, MNIST_BOX)
    height, width = box.shape
    total = float(box.sum())
    centre_y = float(box.sum(axis=1) @ np.arange(height)) / total
    centre_x = float(box.sum(axis=0) @ np.arange(width)) / total
    top = int(np.clip(round(IMAGE_SIDE / 2 - centre_y), 0, IMAGE_SIDE - height))
    left = int(np.clip(round(IMAGE_SIDE / 2 - centre_x), 0, IMAGE_SIDE - width))
    canvas = np.zeros((IMAGE_SIDE, IMAGE_SIDE), dtype=np.float32)
    canvas[top : top + height, left : left + width] = box
    return np.round(canvas * 255).astype(np.uint8)


# ------------------------------------------------------------------------------ pipelines


def _clean(source) -> tuple[np.ndarray, np.ndarray, float]:
    """(soft ink, labelled blobs, source pixels per working pixel) of an image."""
    gray = load(source)
    if min(gray.shape) < 2:
        raise EmptyImageError(
            f"no digit found: the image is {gray.shape[1]}x{gray.shape[0]} pixels"
        )
    width = gray.shape[1]
    gray = reduce_size(gray)
    if min(gray.shape) < 2:
        raise EmptyImageError("no digit found: the image is too long and narrow to hold a digit")
    return *isolate_ink(flatten_background(ink_polarity(gray))), width / gray.shape[1]


def _finish(
    soft: np.ndarray, rows: slice, columns: slice, factor: float, only: np.ndarray | None = None
) -> PreparedDigit:
    """The digit in ``soft[rows, columns]`` (only its ``only`` pixels, a mask of that box)."""
    digit = _crop_to_ink(soft[rows, columns] * (1 if only is None else only))
    matched, written = stroke_views(digit)
    image = centre_by_mass(matched)
    as_written = centre_by_mass(written) if written is not None else None
    box = (columns.start, rows.start, columns.stop, rows.stop)
    return PreparedDigit(image, tuple(round(side * factor) for side in box), as_written)


def _guarded(step, source):
    """Run one image's ``step``: any failure in decoding or preprocessing becomes that image's
    ImageError naming it, so one bad image never stops the others."""
    try:
        with np.errstate(all="ignore"):
            return step(source)
    except ImageError as error:
        raise error.naming(source_name(source)) from None
    except Exception as error:  # a decoder or NumPy failing on a crafted file
        raise ImageError(
            f"cannot be read ({type(error).__name__}: {str(error)[:200]})", source_name(source)
        ) from None


def _one_digit(source) -> PreparedDigit:
    soft, blobs, factor = _clean(source)
    rows, columns = ndimage.find_objects((blobs > 0).astype(int))[0]
    return _finish(soft, rows, columns, factor)


def prepare_digit(source) -> PreparedDigit:
    """One digit: any image -> its (28, 28) uint8 like MNIST, where it was, and (a thin line)
    the digit as written. Raises ImageError/EmptyImageError."""
    return _guarded(_one_digit, source)


def prepare_image(source) -> np.ndarray:
    """One digit: any image -> (28, 28) uint8 like MNIST. Raises ImageError/EmptyImageError."""
    return prepare_digit(source).image


# Side-by-side blobs closer than TOUCHING_GAP times the tallest blob's height belong to one digit
# (an open 4 written in two strokes) if one of them is shorter than PART_HEIGHT times that height
# (two full-height strokes are two digits: "11") and together they are no wider than a digit.
TOUCHING_GAP = 0.2
PART_HEIGHT = 0.8
MAX_DIGIT_WIDTH = 1.1


def _group_blobs(blobs: np.ndarray) -> list[tuple[slice, slice, np.ndarray]]:
    """Ink blobs -> digits, left to right: each one's rows, columns, and which pixels of that
    box are its own.

    A blob mostly above or below another joins it (the bar of a 5); so do blobs nearly touching
    side by side when together they are no wider than a digit (an open 4 written in two strokes).
    """
    groups: list[list] = []  # [left, right, top, bottom, ids]
    boxes = ndimage.find_objects(blobs)
    order = sorted(range(len(boxes)), key=lambda i: boxes[i][1].start)
    tallest = max(rows.stop - rows.start for rows, _ in boxes)
    for index in order:
        rows, columns = boxes[index]
        if groups:
            last = groups[-1]
            overlap = min(last[1], columns.stop) - max(last[0], columns.start)
            stacked = overlap >= 0.5 * min(columns.stop - columns.start, last[1] - last[0])
            # Two full-height strokes side by side are two digits ("11", the 1 of "16"); only a
            # shorter part joins its neighbour (the stem of an open 4 written in two strokes).
            part = min(rows.stop - rows.start, last[3] - last[2]) < PART_HEIGHT * tallest
            touching = (
                part
                and columns.start - last[1] < TOUCHING_GAP * tallest
                and max(last[1], columns.stop) - last[0] <= MAX_DIGIT_WIDTH * tallest
            )
            if stacked or touching:
                last[0], last[1] = min(last[0], columns.start), max(last[1], columns.stop)
                last[2], last[3] = min(last[2], rows.start), max(last[3], rows.stop)
                last[4].append(index + 1)
                continue
        groups.append([columns.start, columns.stop, rows.start, rows.stop, [index + 1]])
    result = []
    for left, right, top, bottom, ids in groups:
        rows, columns = slice(top, bottom), slice(left, right)
        member = np.zeros(len(boxes) + 1, bool)  # a lookup table: np.isin costs ~0.2 ms a call
        member[ids] = True
        result.append((rows, columns, member[blobs[rows, columns]]))
    return result


def _blob_digits(soft: np.ndarray, blobs: np.ndarray, factor: float) -> list[PreparedDigit]:
    return [
        _finish(soft, rows, columns, factor, only) for rows, columns, only in _group_blobs(blobs)
    ]


def _digits_of_number(source) -> list[PreparedDigit]:
    return _blob_digits(*_clean(source))


def prepare_number(source) -> list[PreparedDigit]:
    """A written number: each digit, left to right, prepared like ``prepare_image``."""
    return _guarded(_digits_of_number, source)


# A narrow hand (a steep script, a condensed font: digits at most half as wide as tall) is
# read a second time from its ink made this many times as wide, and the likelier reading kept
# (``Predictor.read_strips``). Chosen on benchmarks/number_reading.py's font numbers (fifteenth
# session); on a second set of 385, 1.3 to 1.6 read within two numbers of each other.
WIDENED = 1.4


def fit_strip(ink: np.ndarray) -> tuple[np.ndarray, int]:
    """A written number's ink (light on dark, float in [0, 1]) -> the number reader's input.

    The stroke is matched to MNIST's against the number's height, the height scaled to 20 px
    (or less, so that a long number fits the strip), and the number placed left-aligned,
    vertically centred. Returns the (28, 224) uint8 strip and the columns its ink fills. The
    reader's training numbers go through this same function.
    """
    ink = _crop_to_ink(match_stroke(_crop_to_ink(ink), by_height=True))
    height, width = ink.shape
    scale = min(MNIST_BOX / height, (STRIP_WIDTH - 2 * STRIP_MARGIN) / width)
    fitted = _resize(ink, max(1, round(width * scale)), max(1, round(height * scale)))
    strip = np.zeros((IMAGE_SIDE, STRIP_WIDTH), np.float32)
    top = (IMAGE_SIDE - fitted.shape[0]) // 2
    strip[top : top + fitted.shape[0], STRIP_MARGIN : STRIP_MARGIN + fitted.shape[1]] = fitted
    return np.round(strip * 255).astype(np.uint8), fitted.shape[1]


def _strip_of_number(source, with_digits: bool = True) -> PreparedStrip:
    soft, blobs, factor = _clean(source)
    ink = soft * (blobs > 0)
    columns = np.flatnonzero(ink.max(axis=0) > 0.05)
    left, right = columns[0] * factor, (columns[-1] + 1) * factor
    strip = PreparedStrip(*fit_strip(ink), left, right)
    if with_digits:
        strip.digits = _blob_digits(soft, blobs, factor)
        ink = _crop_to_ink(ink)
        widened = _resize(ink, round(ink.shape[1] * WIDENED), ink.shape[0])
        strip.widened = PreparedStrip(
            *fit_strip(widened), left, right,
            [PreparedDigit(widened_digit(digit.image), digit.box) for digit in strip.digits],
        )  # fmt: skip
    return strip


def widened_digit(digit: np.ndarray) -> np.ndarray:
    """A prepared digit (28x28 uint8) made WIDENED times as wide, prepared again (a digit
    with no ink over ``_crop_to_ink``'s level is returned as it is)."""
    ink = digit.astype(np.float32) / 255
    if not (ink > 0.05).any():
        return digit
    ink = _crop_to_ink(ink)
    return centre_by_mass(_resize(ink, round(ink.shape[1] * WIDENED), ink.shape[0]))


def prepare_strip(source, with_digits: bool = True) -> PreparedStrip:
    """A written number, whole, as the number reader reads it (``fit_strip``), plus (unless
    ``with_digits`` is False: training numbers need only the strip) its blob groups prepared
    as digits and the strip of its ink widened (``PreparedStrip.widened``)."""
    return _guarded(functools.partial(_strip_of_number, with_digits=with_digits), source)


PREPARERS = {
    "digit": prepare_image,
    "prepared digit": prepare_digit,
    "number": prepare_number,
    "strip": prepare_strip,
}


def _prepare_or_error(source, kind: str = "digit"):
    try:
        return PREPARERS[kind](source)
    except ImageError as error:
        return error


def _worker_context():
    """Forked workers start at once (0.03 s for two, measured), but forking a process in which
    JAX runs (after a training, in a notebook or a test) can deadlock on its threads: then a
    fork server, a fresh process that the workers are forked from (0.8 s for two)."""
    import multiprocessing
    import sys

    methods = multiprocessing.get_all_start_methods()
    if "jax" in sys.modules or "fork" not in methods:
        return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    return multiprocessing.get_context("fork")


def prepare_many(sources: list, kind: str = "digit", workers: int | None = None) -> list:
    """``prepare_image`` (or ``prepare_number``, ``prepare_strip``: ``kind`` is a key of
    PREPARERS) for many images, in order; an unreadable one gives its ImageError in its place.

    Many images are spread over processes (one per core): preparing one takes ~2 ms of Python
    and NumPy, so two cores nearly double the rate. Few images are done here, without the
    ~0.1 s it takes to start the workers.
    """
    import functools
    from concurrent.futures import ProcessPoolExecutor

    workers = workers or os.cpu_count() or 1
    one = functools.partial(_prepare_or_error, kind=kind)
    if workers < 2 or len(sources) < 200:
        return [one(source) for source in sources]
    with ProcessPoolExecutor(workers, mp_context=_worker_context()) as pool:
        return list(pool.map(one, sources, chunksize=64))
