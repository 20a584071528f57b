"""Written numbers made from single MNIST digits, and photographs of them.

The number reader learns from numbers composed here out of MNIST **training** digits, and
``benchmarks/numbers.py`` tests it on numbers composed the same way out of **test** digits
(writers it never saw). A number is written the way people write: digits of slightly different
sizes on a wandering baseline, slanted, with gaps from wide to touching and overlapping, a pen
thinner or thicker than MNIST's. ``photograph`` then puts it on paper under uneven light, with
noise, blur, a tint and JPEG artefacts, as ``benchmarks/robustness.py`` does for single digits.
"""

from __future__ import annotations

import dataclasses
import functools
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter
from scipy import ndimage

from digitlab.config import IMAGE_SIDE, NUM_CLASSES, STRIP_WIDTH


@dataclass(frozen=True)
class Handwriting:
    """How much composed numbers vary; each range is drawn from uniformly, per number or digit."""

    # Gap between neighbours in MNIST pixels (a digit is ~20 px tall), by kind and share: the
    # reader must cope with touching and overlapping digits, which blob segmentation cannot.
    gaps: tuple[tuple[str, float, int, int], ...] = (
        ("apart", 0.35, 4, 10),
        ("close", 0.35, 1, 3),
        ("touching", 0.30, -3, 0),  # 0: touching, below 0: overlapping by that many pixels
    )
    ones_share: float = 0.2  # of all digits, 1s (narrow: what blob grouping got wrong most)
    digit_scale: tuple[float, float] = (0.85, 1.12)  # each digit's size against its neighbours
    baseline_pixels: float = 2.0  # each digit up or down by at most this
    slant: float = 0.25  # shear of the whole number, either way (0.25: about 14 degrees)
    thin_share: float = 0.15  # numbers written with a thinner pen than MNIST's
    thick_share: float = 0.15  # and with a thicker one

    def with_touching(self, share: float) -> Handwriting:
        """The same style with ``share`` of the gaps touching, the other kinds scaled to the
        rest in their own proportions."""
        touching = next(gap for gap in self.gaps if gap[0] == "touching")
        others = [gap for gap in self.gaps if gap[0] != "touching"]
        total = sum(gap[1] for gap in others)
        scaled = tuple((name, (1 - share) * part / total, low, high)
                       for name, part, low, high in others)  # fmt: skip
        return dataclasses.replace(self, gaps=(*scaled, ("touching", share, *touching[2:])))


HANDWRITING = Handwriting()


def random_text(length: int, rng: np.random.Generator, style: Handwriting = HANDWRITING) -> str:
    """``length`` random digits, ``style.ones_share`` of them 1s on average."""
    others = [digit for digit in range(NUM_CLASSES) if digit != 1]
    return "".join(
        "1" if rng.random() < style.ones_share else str(rng.choice(others)) for _ in range(length)
    )


def _gap(rng: np.random.Generator, style: Handwriting, kind: str | None = None) -> int:
    """A gap in pixels: of ``kind``, or of a kind drawn by the style's shares."""
    if kind is None:
        shares = [share for _, share, _, _ in style.gaps]
        chosen = style.gaps[rng.choice(len(style.gaps), p=shares)]
    else:
        chosen = next(gap for gap in style.gaps if gap[0] == kind)
    return int(rng.integers(chosen[2], chosen[3] + 1))


def digit_pools(labels: np.ndarray) -> list[np.ndarray]:
    """For each digit 0-9, the indices of the images of it."""
    return [np.flatnonzero(labels == digit) for digit in range(NUM_CLASSES)]


def compose(
    text: str,
    images: np.ndarray,
    pools: list[np.ndarray],
    rng: np.random.Generator,
    style: Handwriting = HANDWRITING,
    gap_kind: str | None = None,
    writer: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
) -> np.ndarray:
    """The digits of ``text``, each a random MNIST digit of that label, written side by side.

    (N, 28, 28) uint8 digits and their ``digit_pools`` -> (H, W) float32 ink in [0, 1], light
    on dark. ``gap_kind``
    ("apart", "close", "touching") fixes the kind of every gap; by default each is drawn.
    ``writer``, one of ``augment.HANDWRITING_CONDITIONS``, is applied to every digit: the
    number as another writer, pen or scanner gives it.
    """
    height = IMAGE_SIDE + 2 * int(np.ceil(style.baseline_pixels)) + 8
    pieces, gaps = [], []
    for position, character in enumerate(text):
        image = images[rng.choice(pools[int(character)])]
        if writer is not None:
            written = np.clip(writer(image.astype(np.float32) / 255, rng), 0, 1)
            image = np.round(written * 255).astype(np.uint8)
        side = max(1, round(IMAGE_SIDE * rng.uniform(*style.digit_scale)))
        resized = Image.fromarray(image).resize((side, side), Image.Resampling.BILINEAR)
        digit = np.asarray(resized, np.float32) / 255
        columns = np.flatnonzero(digit.max(axis=0) > 0.1)
        if columns.size:
            digit = digit[:, columns.min() : columns.max() + 1]
        pieces.append(digit)
        if position:
            gaps.append(_gap(rng, style, gap_kind))
    width = sum(piece.shape[1] for piece in pieces) + sum(gaps) + 2 * height
    canvas = np.zeros((height, max(width, 1)), np.float32)
    left = height // 2
    for index, piece in enumerate(pieces):
        if index:
            left += gaps[index - 1]
        shift = rng.uniform(-style.baseline_pixels, style.baseline_pixels)
        top = int(round((height - piece.shape[0]) / 2 + shift))
        top = min(max(top, 0), height - piece.shape[0])
        region = canvas[top : top + piece.shape[0], left : left + piece.shape[1]]
        np.maximum(region, piece[: region.shape[0], : region.shape[1]], out=region)
        left += piece.shape[1]
    canvas = _slant(canvas, rng.uniform(-style.slant, style.slant))
    pen = rng.random()
    if pen < style.thin_share:
        canvas = ndimage.grey_erosion(canvas, size=(2, 2)) * 0.5 + canvas * 0.5
    elif pen < style.thin_share + style.thick_share:
        canvas = ndimage.grey_dilation(canvas, size=(2, 2))
    columns = np.flatnonzero(canvas.max(axis=0) > 0.05)
    return canvas[:, columns.min() : columns.max() + 1] if columns.size else canvas


def narrowed(ink: np.ndarray, width: float) -> np.ndarray:
    """A composed number (``compose``'s ink) written ``width`` times as wide: a narrow hand."""
    narrow = Image.fromarray(ink.astype(np.float32), "F").resize(
        (max(1, round(ink.shape[1] * width)), ink.shape[0]), Image.Resampling.LANCZOS
    )
    return np.clip(np.asarray(narrow), 0, 1)


def _slant(image: np.ndarray, shear: float) -> np.ndarray:
    """Shear about the middle row: positive leans the tops to the right, like italics."""
    height, width = image.shape
    pad = int(np.ceil(abs(shear) * height / 2)) + 1
    middle = (height - 1) / 2
    # output (x, y) reads input (x - pad + shear * (y - middle), y)
    sheared = Image.fromarray(image, "F").transform(
        (width + 2 * pad, height),
        Image.Transform.AFFINE,
        (1.0, shear, -pad - shear * middle, 0.0, 1.0, 0.0),
        Image.Resampling.BILINEAR,
    )
    return np.asarray(sheared)


def photograph(ink: np.ndarray, rng: np.random.Generator, height: int | None = None) -> bytes:
    """Ink (light on dark, any size) -> JPEG bytes of it written on paper and photographed.

    Dark pen on light paper (sometimes the reverse), the writing 40-120 px tall at a random
    place, uneven light, noise, blur, a colour tint and JPEG quality 40-90.
    """
    height = height or int(rng.integers(40, 121))
    scale = height / ink.shape[0]
    width = max(1, round(ink.shape[1] * scale))
    written = Image.fromarray(np.clip(ink * 255, 0, 255).astype(np.uint8))
    ink = np.asarray(written.resize((width, height), Image.Resampling.BICUBIC), np.float32) / 255
    canvas = np.full(
        (height + int(rng.integers(10, 80)), width + int(rng.integers(20, 160))),
        rng.uniform(0.7, 0.95),
        np.float32,
    )
    top = int(rng.integers(0, canvas.shape[0] - height + 1))
    left = int(rng.integers(0, canvas.shape[1] - width + 1))
    region = canvas[top : top + height, left : left + width]
    region[:] = region * (1 - ink) + rng.uniform(0.0, 0.3) * ink
    ys, xs = np.mgrid[0 : canvas.shape[0], 0 : canvas.shape[1]]
    angle, light = rng.uniform(0, 2 * np.pi), rng.uniform(0.0, 0.3)
    gradient = np.cos(angle) * xs / canvas.shape[1] + np.sin(angle) * ys / canvas.shape[0]
    canvas *= 1 - light * (gradient + 1) / 2
    canvas += rng.normal(0, rng.uniform(0.0, 0.05), canvas.shape).astype(np.float32)
    if rng.random() < 0.1:  # chalk on a board, a screen
        canvas = 1 - canvas
    rgb = np.clip(canvas[..., None] * rng.uniform(0.8, 1.0, 3) * 255, 0, 255).astype(np.uint8)
    image = Image.fromarray(rgb, "RGB").filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.2)))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=int(rng.integers(40, 91)))
    return buffer.getvalue()


# ------------------------------------------------------------ numbers for the number reader


@dataclass
class Numbers:
    """Written numbers as the reader sees them, with their truth."""

    strips: np.ndarray  # (N, 28, 224) uint8, from preprocess.fit_strip
    texts: list[str]
    photographed: np.ndarray  # (N,) bool: went through photograph() and prepare_strip()
    # (N,) bool: written by another writer, pen or scanner (augment.HANDWRITING_CONDITIONS),
    # scanned and read back through prepare_strip()
    other_writers: np.ndarray

    def targets(self, max_length: int) -> np.ndarray:
        """(N, max_length) int32: digit d as d + 1, padded with 0 (CTC's blank)."""
        targets = np.zeros((len(self.texts), max_length), np.int32)
        for row, text in enumerate(self.texts):
            targets[row, : len(text)] = [int(character) + 1 for character in text]
        return targets


_SOURCE: tuple[np.ndarray, list] | None = None  # the digits and their pools, in each worker
CHUNK = 256  # numbers per worker task


def _in_workers(function, tasks: list, workers: int | None, initializer=None, initargs=()):
    """``[function(task) for task in tasks]``, over one process per core.

    "spawn", not "fork": the trainer has JAX's threads running, and forking them can deadlock.
    Each worker gets ``initargs`` once, through ``initializer``, and one BLAS thread (the
    workers already use every core).
    """
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    workers = min(workers or os.cpu_count() or 1, len(tasks))
    if workers < 2:
        if initializer:
            initializer(*initargs)
        return [function(task) for task in tasks]
    before = os.environ.get("OPENBLAS_NUM_THREADS")
    os.environ["OPENBLAS_NUM_THREADS"] = "1"  # read by the workers as they start
    try:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            workers, mp_context=context, initializer=initializer, initargs=initargs
        ) as pool:
            return list(pool.map(function, tasks))
    finally:
        if before is None:
            del os.environ["OPENBLAS_NUM_THREADS"]
        else:
            os.environ["OPENBLAS_NUM_THREADS"] = before


def _share_source(images: np.ndarray, labels: np.ndarray) -> None:
    global _SOURCE
    _SOURCE = (images, digit_pools(labels))


def _numbers_chunk(task: tuple) -> tuple:
    from digitlab import augment, preprocess

    count, seed, max_length, photo_share, other_writers_share, hollow_share, min_length, style = (
        task
    )
    images, pools = _SOURCE
    writers = list(augment.HANDWRITING_CONDITIONS.values())
    rng = np.random.default_rng(seed)
    strips = np.zeros((count, IMAGE_SIDE, STRIP_WIDTH), np.uint8)
    texts = []
    photographed, other_writer = np.zeros(count, bool), np.zeros(count, bool)
    for index in range(count):
        text = random_text(int(rng.integers(min_length, max_length + 1)), rng, style)
        writer = None  # drawn only when asked for: numbers made without stay as they were
        if other_writers_share and rng.random() < other_writers_share:
            writer = writers[int(rng.integers(len(writers)))]
        elif hollow_share and rng.random() < hollow_share:
            writer = augment.hollow_strokes
        ink = compose(text, images, pools, rng, style, writer=writer)
        try:
            if writer is not None:  # scanned and read back, as a user's image of it is prepared
                strips[index] = preprocess.prepare_strip(scanned(ink), with_digits=False).image
                other_writer[index] = True
            elif rng.random() < photo_share:  # small photos: cheap to make, the hardest to read
                photo = photograph(ink, rng, height=int(rng.integers(28, 65)))
                strips[index] = preprocess.prepare_strip(photo, with_digits=False).image
                photographed[index] = True
            else:
                strips[index] = preprocess.fit_strip(ink)[0]
        except preprocess.ImageError:  # too faint or broken once so written: use it clean
            strips[index] = preprocess.fit_strip(ink)[0]
        texts.append(text)
    return strips, texts, photographed, other_writer


TEST_NUMBERS = 2_000  # a number reader's test: composed from MNIST's test digits
TEST_SEED = 2026  # the same test numbers for every run, whatever its seed
TEST_MAX_LENGTH = 8


def test_numbers(images: np.ndarray, labels: np.ndarray) -> Numbers:
    """The number reader's test set: TEST_NUMBERS numbers of 1-8 digits from ``images`` (the
    test digits), the same for every run; clean (photographs are the benchmark's)."""
    return make_numbers(images, labels, TEST_NUMBERS, TEST_SEED, TEST_MAX_LENGTH)


def make_numbers(
    images: np.ndarray,
    labels: np.ndarray,
    count: int,
    seed: int,
    max_length: int = 10,
    photo_share: float = 0.0,
    min_length: int = 1,
    workers: int | None = None,
    style: Handwriting = HANDWRITING,
    other_writers_share: float = 0.0,
    hollow_share: float = 0.0,
) -> Numbers:
    """``count`` numbers of ``min_length`` to ``max_length`` digits composed from ``images``
    in ``style``; ``other_writers_share`` of them written by another writer, pen or scanner
    (one of ``augment.HANDWRITING_CONDITIONS`` on each of their digits: hollow strokes, blur,
    low resolution...) and ``hollow_share`` of the others with hollow strokes, each scanned and
    read back (both counted in ``Numbers.other_writers``); ``photo_share`` of the others
    photographed and read back as a person's photo would be.

    Spread over one process per core (a number takes ~2 ms, ~10 ms photographed); the same
    ``seed`` gives the same numbers whatever the number of workers.
    """
    seeds = np.random.SeedSequence(seed).spawn(-(-count // CHUNK))
    tasks = [
        (min(CHUNK, count - start), chunk_seed, max_length, photo_share, other_writers_share,
         hollow_share, min_length, style)
        for start, chunk_seed in zip(range(0, count, CHUNK), seeds, strict=True)
    ]  # fmt: skip
    parts = _in_workers(_numbers_chunk, tasks, workers, _share_source, (images, labels))
    if not parts:
        none = np.zeros(0, bool)
        return Numbers(np.zeros((0, IMAGE_SIDE, STRIP_WIDTH), np.uint8), [], none, none)
    return Numbers(
        np.concatenate([part[0] for part in parts]),
        [text for part in parts for text in part[1]],
        np.concatenate([part[2] for part in parts]),
        np.concatenate([part[3] for part in parts]),
    )


# -------------------------------------------------------------- things that are not digits

# Glyphs a person could take for a digit in handwriting (O/0, I/l/1, S/5, Z/2, B/8, g/q/9, b/6,
# G/6; brackets, slashes and "!" look like a 1): neither trained on as "not a digit" nor
# counted as one.
DIGIT_LIKE = "OoDQIlijJSsZzBbGgqT()/\\|![]{}"
GLYPHS = "".join(
    character
    for character in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz#%&@?+=*$<>~^"
    if character not in DIGIT_LIKE
)
# Font families the reject class is trained on, by their folder under FONT_FOLDER: every style
# of them this machine has, from Debian's fonts-dejavu-core, fonts-liberation,
# fonts-freefont-ttf, fonts-urw-base35 (with the script Z003), fonts-sil-andika (a teacher's
# hand), fonts-tlwg-purisa-ttf, fonts-dustin, fonts-tomsontalks, fonts-lobster and
# fonts-cabinsketch (handwriting, script and sketched display fonts). The benchmarks test on
# other handwriting fonts. Symbol fonts are left out: their letters are pictures.
TRAINING_FONT_FAMILIES = ("dejavu", "liberation", "freefont", "urw-base35", "andika", "tlwg",
                          "dustin", "tomsontalks", "lobster", "cabinsketch")  # fmt: skip
NOT_LETTERS = ("Math", "StandardSymbols", "D050000L")
FONT_FOLDER = Path("/usr/share/fonts")
NON_DIGIT_CANVAS = 84  # px: non-digits are drawn this large, then prepared like a person's image


def training_font_paths() -> dict[str, list[Path]]:
    """The font files of each of TRAINING_FONT_FAMILIES this machine has."""
    paths = sorted(FONT_FOLDER.rglob("*")) if FONT_FOLDER.is_dir() else []
    return {
        family: [path for path in paths if path.suffix in (".ttf", ".otf")
                 and path.parent.name == family and not path.name.startswith(NOT_LETTERS)]
        for family in TRAINING_FONT_FAMILIES
    }  # fmt: skip


def _covered(font, glyphs: str) -> str:
    """The characters of ``glyphs`` that ``font`` has (a missing one is drawn as the font's
    empty box, which is the box of a private-use character too)."""
    missing = bytes(font.getmask("\ue000"))
    return "".join(glyph for glyph in glyphs if bytes(font.getmask(glyph)) != missing)


@functools.cache  # once per process: finding each font's characters takes ~1 s
def _training_fonts() -> list[list[tuple]]:
    """The training fonts by family, each font with the GLYPHS it has; each family is drawn
    from as often as any other, whatever its number of styles. Else Pillow's own font."""
    from PIL import ImageFont

    families = [
        [(lambda size, path=path: ImageFont.truetype(str(path), size),
          _covered(ImageFont.truetype(str(path), 40), GLYPHS)) for path in paths]
        for paths in training_font_paths().values()
    ]  # fmt: skip
    return [family for family in families if family] or [
        [(lambda size: ImageFont.load_default(size=size), GLYPHS)]
    ]


def _glyph(rng: np.random.Generator, fonts: list[list[tuple]]) -> np.ndarray:
    from PIL import ImageDraw

    image = Image.new("L", (NON_DIGIT_CANVAS, NON_DIGIT_CANVAS), 0)
    draw = ImageDraw.Draw(image)
    family = fonts[int(rng.integers(len(fonts)))]
    make, glyphs = family[int(rng.integers(len(family)))]
    font = make(int(rng.integers(36, 60)))
    glyph = glyphs[int(rng.integers(len(glyphs)))]
    left, top, right, bottom = draw.textbbox((0, 0), glyph, font=font)
    x = (NON_DIGIT_CANVAS - (right - left)) / 2 - left
    y = (NON_DIGIT_CANVAS - (bottom - top)) / 2 - top
    draw.text((x, y), glyph, fill=255, font=font, stroke_width=int(rng.integers(0, 3)),
              stroke_fill=255)  # fmt: skip
    return np.asarray(image.rotate(rng.uniform(-15, 15), Image.Resampling.BILINEAR))


def _scribble(rng: np.random.Generator) -> np.ndarray:
    from PIL import ImageDraw

    image = Image.new("L", (NON_DIGIT_CANVAS, NON_DIGIT_CANVAS), 0)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 7))):
        points = [tuple(rng.uniform(8, NON_DIGIT_CANVAS - 8, 2)) for _ in range(rng.integers(2, 7))]
        draw.line(points, fill=255, width=int(rng.integers(4, 10)), joint="curve")
    return np.asarray(image)


def _shapes(rng: np.random.Generator) -> np.ndarray:
    """Filled shapes, alone or overlapping: silhouettes of things, not strokes. Half of them
    are mirror-symmetric (as made things and creatures mostly are), and half are shaded with
    a texture (cloth, fur, light) rather than one flat tone; of those, most are tall or wide
    things (a bottle, a dress, a bench), some standing on two legs (trousers, a table). A flat
    tall one would be a 1 written with a marker."""
    from PIL import ImageDraw

    image = Image.new("L", (NON_DIGIT_CANVAS, NON_DIGIT_CANVAS), 0)
    draw = ImageDraw.Draw(image)
    symmetric = rng.random() < 0.5
    for _ in range(int(rng.integers(1, 4))):
        box = sorted(rng.uniform(4, NON_DIGIT_CANVAS - 4, 2)), sorted(rng.uniform(4, 80, 2))
        corners = [box[0][0], box[1][0], box[0][1] + 6, box[1][1] + 6]
        shade = int(rng.integers(120, 256))
        if rng.random() < 0.5:
            draw.ellipse(corners, fill=shade)
        else:
            points = [
                tuple(rng.uniform(4, NON_DIGIT_CANVAS - 4, 2)) for _ in range(rng.integers(3, 7))
            ]
            draw.polygon(points, fill=shade)
    silhouette = np.asarray(image, np.float32)
    if symmetric:
        silhouette = np.maximum(silhouette, silhouette[:, ::-1])
    if rng.random() < 0.5:
        silhouette *= 0.35 + 0.65 * _pink_noise(rng)
        if rng.random() < 0.75:
            tall = rng.random() < 0.7
            aspect = rng.uniform(0.33, 0.7) if tall else rng.uniform(1.7, 4)  # a 1: 0.1-0.3
            silhouette = _stretched(silhouette, aspect)
            if tall and rng.random() < 0.5:
                _split_legs(silhouette, rng)
    return silhouette.astype(np.uint8)


def _ink_rows_and_columns(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.flatnonzero(image.any(axis=1)), np.flatnonzero(image.any(axis=0))


def _split_legs(image: np.ndarray, rng: np.random.Generator) -> None:
    """Cut a gap up from the bottom of the ink's middle, in place: two legs."""
    rows, columns = _ink_rows_and_columns(image)
    height, middle = rows[-1] - rows[0] + 1, (columns[0] + columns[-1]) // 2
    half_gap = max(1, round((columns[-1] - columns[0] + 1) * rng.uniform(0.04, 0.12)))
    top = rows[-1] - round(height * rng.uniform(0.3, 0.7))
    image[top:, middle - half_gap : middle + half_gap + 1] = 0


def _stretched(image: np.ndarray, aspect: float) -> np.ndarray:
    """The ink of ``image`` resized to ``aspect`` (width / height), as large as fits, centred on
    a canvas of the same size."""
    rows, columns = _ink_rows_and_columns(image)
    if not rows.size:
        return image
    ink = image[rows[0] : rows[-1] + 1, columns[0] : columns[-1] + 1]
    side = image.shape[0] - 8
    width, height = (round(side * aspect), side) if aspect < 1 else (side, round(side / aspect))
    squeezed = np.asarray(Image.fromarray(ink).resize((width, height), Image.Resampling.BILINEAR))
    canvas = np.zeros_like(image)
    top, left = (image.shape[0] - height) // 2, (image.shape[1] - width) // 2
    canvas[top : top + height, left : left + width] = squeezed
    return canvas


def _pink_noise(rng: np.random.Generator) -> np.ndarray:
    """1/f noise, the spectrum of natural images, scaled to [0, 1]."""
    side = NON_DIGIT_CANVAS
    frequencies = np.sqrt(np.add.outer(np.fft.fftfreq(side) ** 2, np.fft.fftfreq(side) ** 2))
    frequencies[0, 0] = 1
    spectrum = (rng.normal(size=(side, side)) + 1j * rng.normal(size=(side, side))) / frequencies
    field = np.real(np.fft.ifft2(spectrum))
    return (field - field.min()) / max(field.max() - field.min(), 1e-9)


def _noise(rng: np.random.Generator) -> np.ndarray:
    side = NON_DIGIT_CANVAS
    kind = int(rng.integers(3))
    if kind == 0:
        return rng.integers(0, 256, (side, side)).astype(np.uint8)
    if kind == 1:
        return ((rng.random((side, side)) < rng.uniform(0.05, 0.4)) * 255).astype(np.uint8)
    field = _pink_noise(rng)  # thresholded half of the time
    if rng.random() < 0.5:
        field = (field > np.quantile(field, rng.uniform(0.6, 0.85))).astype(float)
    return (field * 255).astype(np.uint8)


def non_digit_drawings(count: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``count`` images that are not digits, light on dark, ``NON_DIGIT_CANVAS`` px: letters
    and symbols in the training fonts (two in five: the hardest to tell from digits),
    scribbles, filled shapes and noise."""
    fonts = _training_fonts()
    makers = [lambda: _glyph(rng, fonts), lambda: _scribble(rng), lambda: _glyph(rng, fonts),
              lambda: _shapes(rng), lambda: _noise(rng)]  # fmt: skip
    return [makers[index % len(makers)]() for index in range(count)]


def _non_digits_chunk(task: tuple[int, np.random.SeedSequence]) -> list[np.ndarray]:
    from digitlab import preprocess

    count, seed = task
    prepared = [
        preprocess._prepare_or_error(drawing)
        for drawing in non_digit_drawings(count, np.random.default_rng(seed))
    ]
    return [item for item in prepared if not isinstance(item, preprocess.ImageError)]


def prepared_non_digits(count: int, seed: int, workers: int | None = None) -> np.ndarray:
    """``non_digit_drawings`` prepared as a person's images are (``preprocess.prepare_image``):
    the 28x28 inputs a digit model gets from them. Those in which preprocessing finds no ink
    at all are left out (they never reach a model). (M <= count, 28, 28) uint8."""
    seeds = np.random.SeedSequence(seed).spawn(-(-count // CHUNK))
    tasks = [(min(CHUNK, count - start), chunk_seed)
             for start, chunk_seed in zip(range(0, count, CHUNK), seeds, strict=True)]  # fmt: skip
    kept = [image for part in _in_workers(_non_digits_chunk, tasks, workers) for image in part]
    return np.stack(kept) if kept else np.zeros((0, IMAGE_SIDE, IMAGE_SIDE), np.uint8)


def _photographed_chunk(task: tuple[np.ndarray, np.random.SeedSequence]) -> list:
    from digitlab import preprocess

    digits, seed = task
    rng = np.random.default_rng(seed)
    return [
        preprocess._prepare_or_error(photograph(digit.astype(np.float32) / 255, rng))
        for digit in digits
    ]


def _read_back(chunk, digits: np.ndarray, seed: int, workers: int | None):
    """``chunk`` over ``digits`` in tasks of CHUNK, over processes -> (the (M <= N, 28, 28)
    uint8 images preprocessing found a digit in, their indices in ``digits``)."""
    seeds = np.random.SeedSequence(seed).spawn(-(-len(digits) // CHUNK))
    tasks = [(digits[start : start + CHUNK], chunk_seed)
             for start, chunk_seed in zip(range(0, len(digits), CHUNK), seeds, strict=True)]  # fmt: skip
    prepared = [item for part in _in_workers(chunk, tasks, workers) for item in part]
    kept = [index for index, item in enumerate(prepared) if isinstance(item, np.ndarray)]
    if not kept:
        return np.zeros((0, IMAGE_SIDE, IMAGE_SIDE), np.uint8), np.zeros(0, int)
    return np.stack([prepared[index] for index in kept]), np.array(kept)


def photographed_digits(
    digits: np.ndarray, seed: int, workers: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """MNIST digits photographed on paper (``photograph``) and prepared back to 28x28, as a
    user's photo of them would be. (N, 28, 28) uint8 -> ((M <= N, 28, 28) uint8, the indices
    of the digits kept)."""
    return _read_back(_photographed_chunk, digits, seed, workers)


SCAN_SIDE = 112  # px: a digit drawn 4x MNIST's size, as robustness.py scans its conditions


def scanned(ink: np.ndarray, scale: float = SCAN_SIDE / IMAGE_SIDE) -> np.ndarray:
    """Float ink in [0, 1], light on dark, at MNIST's scale (a (28, 28) digit, a composed
    number) -> dark ink on white paper ``scale`` times as large (a digit: SCAN_SIDE px), uint8."""
    height, width = ink.shape
    paper = Image.fromarray(np.clip(ink, 0, 1).astype(np.float32), "F")
    paper = paper.resize((round(width * scale), round(height * scale)), Image.Resampling.BICUBIC)
    return (255 - np.clip(np.asarray(paper), 0, 1) * 255).astype(np.uint8)


def _hollow_chunk(task: tuple[np.ndarray, np.random.SeedSequence]) -> list:
    from digitlab import augment, preprocess

    digits, seed = task
    rng = np.random.default_rng(seed)
    return [
        preprocess._prepare_or_error(
            scanned(augment.hollow_strokes(digit.astype(np.float32) / 255, rng))
        )
        for digit in digits
    ]


def hollow_digits_read_back(
    digits: np.ndarray, seed: int, workers: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """MNIST digits written with hollow (outlined) strokes, scanned and prepared back to 28x28
    as a user's image of them would be: what a digit model gets from a bubble font or a traced
    digit. (N, 28, 28) uint8 -> ((M <= N, 28, 28) uint8, the indices of the digits kept)."""
    return _read_back(_hollow_chunk, digits, seed, workers)
