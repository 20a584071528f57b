"""A corpus of hostile and broken image files, made from a few good ones: random bytes,
truncations, bit flips per format, decompression bombs, odd modes, NaN floats, formats that
must not be opened. Used by test_hostile.py (a few hundred files) and
benchmarks/reliability.py (thousands)."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
from PIL import Image

FORMATS = {"PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp", "GIF": ".gif", "WEBP": ".webp",
           "TIFF": ".tif", "PPM": ".ppm", "AVIF": ".avif"}  # fmt: skip


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _digit_image(rng: np.random.Generator, side: int = 64) -> Image.Image:
    """A dark stroke on light paper: enough of a digit for the pipeline to work on."""
    canvas = np.full((side, side), 235, np.uint8)
    column = int(rng.integers(side // 3, 2 * side // 3))
    canvas[side // 6 : 5 * side // 6, column : column + max(2, side // 12)] = 20
    return Image.fromarray(canvas)


def seeds(rng: np.random.Generator) -> dict[str, bytes]:
    """Good files in every supported format and several modes: what the mutations start from."""
    digit = _digit_image(rng)
    files = {}
    for fmt, suffix in FORMATS.items():
        for mode in ("L", "RGB"):
            try:
                files[f"seed-{mode}{suffix}"] = _encoded(digit.convert(mode), fmt)
            except (OSError, KeyError, ValueError):  # a format this Pillow cannot write
                continue
    files["seed-I16.png"] = _encoded(digit.convert("I;16"), "PNG")
    files["seed-F.tif"] = _encoded(digit.convert("F"), "TIFF")
    files["seed-RGBA.png"] = _encoded(digit.convert("RGBA"), "PNG")
    files["seed-P.gif"] = _encoded(digit.convert("P"), "GIF")
    files["seed-1.png"] = _encoded(digit.convert("1"), "PNG")
    return files


def specials() -> dict[str, bytes]:
    """Files crafted to hit known weak spots."""
    nan = np.full((32, 32), np.nan, np.float32)
    nan[8:24, 14:18] = 1.0
    infinite = np.full((32, 32), np.inf, np.float32)
    files = {
        "nan-float.tif": _encoded(Image.fromarray(nan, "F"), "TIFF"),
        "inf-float.tif": _encoded(Image.fromarray(infinite, "F"), "TIFF"),
        "all-nan.tif": _encoded(Image.fromarray(np.full((16, 16), np.nan, np.float32)), "TIFF"),
        "bomb.png": _encoded(Image.new("1", (9000, 9000)), "PNG"),
        "bomb-float.tif": _encoded(Image.new("F", (6000, 6000)), "TIFF", compression="tiff_lzw"),
        "tall.png": _encoded(Image.new("L", (3, 9000), 255), "PNG"),
        "wide.png": _encoded(Image.new("L", (10000, 10), 255), "PNG"),
        "one-pixel.png": _encoded(Image.new("L", (1, 1)), "PNG"),
        "eps-as-png.png": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n",
        "empty.png": b"",
        "text.png": b"this is not an image at all\n" * 10,
        "zeros.png": bytes(4096),
        "cmyk.jpg": _encoded(Image.new("CMYK", (40, 40), (0, 0, 0, 30)), "JPEG"),
        "ico-as-png.png": _encoded(Image.new("RGB", (32, 32)), "ICO"),
    }
    return files


def mutants(files: dict[str, bytes], rng: np.random.Generator, count: int) -> dict[str, bytes]:
    """``count`` broken copies of ``files``: truncated, bit-flipped, spliced or random."""
    names = sorted(files)
    made = {}
    for index in range(count):
        name = names[index % len(names)]
        data = bytearray(files[name])
        kind = index % 5
        if kind == 0:  # truncated anywhere
            data = data[: int(rng.integers(0, max(len(data), 1)))]
        elif kind in (1, 2):  # a few bits flipped, header bytes more often
            for _ in range(int(rng.integers(1, 9))):
                limit = 64 if kind == 1 else max(len(data), 1)
                position = int(rng.integers(0, min(limit, max(len(data), 1))))
                if data:
                    data[position] ^= 1 << int(rng.integers(0, 8))
        elif kind == 3:  # a chunk of another file spliced in
            other = files[names[int(rng.integers(0, len(names)))]]
            cut = int(rng.integers(0, max(len(data), 1)))
            data = data[:cut] + other[int(rng.integers(0, max(len(other), 1))) :]
        else:  # random bytes behind a real header
            data = data[:16] + bytearray(rng.integers(0, 256, int(rng.integers(0, 2000))).tobytes())
        suffix = Path(name).suffix
        made[f"mutant-{index:04d}-{Path(name).stem}{suffix}"] = bytes(data)
    return made


def write_corpus(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """Write seeds, specials and ``count`` mutants into ``folder``; return their paths."""
    rng = np.random.default_rng(seed)
    good = seeds(rng)
    files = {**good, **specials(), **mutants({**good, **specials()}, rng, count)}
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in files.items():
        path = folder / name
        path.write_bytes(data)
        paths.append(path)
    return paths


def slowest_file_seconds(paths: list[Path]) -> float:
    """The longest time one file takes through ``prepare_image`` and ``prepare_number``."""
    from digitlab import preprocess

    slowest = 0.0
    for path in paths:
        started = time.perf_counter()
        for prepare in (preprocess.prepare_image, preprocess.prepare_number):
            try:
                prepare(path)
            except preprocess.ImageError:
                pass
        slowest = max(slowest, time.perf_counter() - started)
    return slowest
