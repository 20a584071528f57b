"""Reading whole written numbers: the baseline that issue #11's number reader must beat.

Numbers are composed from MNIST **test** digits (writers never seen in training): lengths 1-8,
each gap drawn from "apart" (4-10 px at MNIST scale), "close" (1-3 px) and "touching" (0 to -2
px: the digits overlap), with a fixed share of 1s. Each number is read as a clean strip (dark
ink on white) and as a photo-like JPEG (random size on a larger canvas, uneven light, noise,
blur, tint, JPEG quality 40-90), through `Predictor.predict_number` (today: blob segmentation,
then the digit model on each blob). Reports exact-number and per-position digit accuracy by
length, gap kind and condition, and the time to read one 6-digit number warm.

    python benchmarks/number_reading.py [--run DIR] [--count 600] [--seed 0]
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from _common import write_result
from digitlab import datasets
from digitlab.predict import Predictor

GAPS = {"apart": (4, 10), "close": (1, 3), "touching": (-2, 0)}
ONES_SHARE = 0.25  # of all digits: narrow 1s are what blob grouping got wrong most


def compose(text: str, gap_kind: str, images, labels, rng) -> np.ndarray:
    """MNIST test digits side by side (ink light on dark), cropped to their ink columns."""
    low, high = GAPS[gap_kind]
    strip = np.zeros((28, 8), np.float32)
    for digit in text:
        image = images[rng.choice(np.flatnonzero(labels == int(digit)))].astype(np.float32)
        columns = np.flatnonzero(image.max(axis=0) > 30)
        image = image[:, columns.min() : columns.max() + 1]
        gap = int(rng.integers(low, high + 1))
        if gap >= 0:
            strip = np.hstack([strip, np.zeros((28, gap), np.float32), image])
        else:  # overlap: the new digit's first columns are drawn over the last ones
            overlap = min(-gap, image.shape[1] - 1, strip.shape[1])
            joined = np.hstack([strip, np.zeros((28, image.shape[1] - overlap), np.float32)])
            joined[:, -image.shape[1] :] = np.maximum(joined[:, -image.shape[1] :], image)
            strip = joined
    return np.hstack([strip, np.zeros((28, 8), np.float32)])


def clean(strip: np.ndarray) -> Image.Image:
    paper = 255 - np.pad(strip, ((8, 8), (0, 0)))
    return Image.fromarray(paper.clip(0, 255).astype(np.uint8)).resize(
        (paper.shape[1] * 3, paper.shape[0] * 3), Image.Resampling.BICUBIC
    )


def photo(strip: np.ndarray, rng) -> bytes:
    height = int(rng.integers(40, 120))  # the digits' height in the photo
    width = max(1, round(strip.shape[1] * height / 28))
    ink = (
        np.asarray(
            Image.fromarray(strip.clip(0, 255).astype(np.uint8)).resize(
                (width, height), Image.Resampling.BICUBIC
            ),
            np.float32,
        )
        / 255
    )
    canvas = np.full(
        (height + int(rng.integers(20, 120)), width + int(rng.integers(20, 160))),
        rng.uniform(0.7, 0.95),
        np.float32,
    )
    top = int(rng.integers(0, canvas.shape[0] - height + 1))
    left = int(rng.integers(0, canvas.shape[1] - width + 1))
    region = canvas[top : top + height, left : left + width]
    canvas[top : top + height, left : left + width] = region * (1 - ink) + rng.uniform(0, 0.3) * ink
    ys, xs = np.mgrid[0 : canvas.shape[0], 0 : canvas.shape[1]]
    angle, light = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.3)
    gradient = np.cos(angle) * xs / canvas.shape[1] + np.sin(angle) * ys / canvas.shape[0]
    canvas *= 1 - light * (gradient + 1) / 2
    canvas += rng.normal(0, rng.uniform(0, 0.05), canvas.shape)
    rgb = np.clip(canvas[..., None] * rng.uniform(0.8, 1.0, 3) * 255, 0, 255).astype(np.uint8)
    image = Image.fromarray(rgb, "RGB").filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.2)))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=int(rng.integers(40, 91)))
    return buffer.getvalue()


def random_number(rng) -> str:
    length = int(rng.integers(1, 9))
    return "".join(
        "1" if rng.random() < ONES_SHARE else str(rng.choice([0, 2, 3, 4, 5, 6, 7, 8, 9]))
        for _ in range(length)
    )


def score(rows: list[dict], key=None) -> dict:
    groups: dict = {}
    for row in rows:
        groups.setdefault(row[key] if key else "all", []).append(row)
    return {
        str(name): {
            "numbers": len(group),
            "exact": round(float(np.mean([r["read"] == r["text"] for r in group])), 4),
            "digits_in_place": round(
                sum(sum(a == b for a, b in zip(r["read"], r["text"], strict=False)) for r in group)
                / sum(len(r["text"]) for r in group),
                4,
            ),
            "right_length": round(
                float(np.mean([len(r["read"]) == len(r["text"]) for r in group])), 4
            ),
        }
        for name, group in sorted(groups.items())
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=None)
    parser.add_argument("--count", type=int, default=600, help="numbers per condition")
    parser.add_argument("--seed", type=int, default=0)
    arguments = parser.parse_args()
    rng = np.random.default_rng(arguments.seed)
    _, (images, labels) = datasets.load_data("mnist", report=lambda line: None)
    predictor = Predictor.from_run(arguments.run)
    rows = []
    for index in range(arguments.count):
        text = random_number(rng)
        gap_kind = list(GAPS)[index % len(GAPS)]
        strip = compose(text, gap_kind, images, labels, rng)
        for condition, image in (("clean", clean(strip)), ("photo", photo(strip, rng))):
            try:
                read = predictor.predict_number(image).text
            except Exception as error:  # an ImageError: counted as a wrong reading
                read = f"<{type(error).__name__}>"
            rows.append(
                {
                    "text": text,
                    "read": read,
                    "length": len(text),
                    "gap": gap_kind,
                    "condition": condition,
                }  # fmt: skip
            )
    six = clean(compose("190273", "close", images, labels, rng))
    predictor.predict_number(six)
    seconds = []
    for _ in range(50):
        started = time.perf_counter()
        predictor.predict_number(six)
        seconds.append(time.perf_counter() - started)
    by_condition = {
        condition: {
            "all": score([r for r in rows if r["condition"] == condition])["all"],
            "by_gap": score([r for r in rows if r["condition"] == condition], "gap"),
            "by_length": score([r for r in rows if r["condition"] == condition], "length"),
            "length_at_most_6": score(
                [r for r in rows if r["condition"] == condition and r["length"] <= 6]
            )["all"],
        }
        for condition in ("clean", "photo")
    }
    mistakes = [r for r in rows if r["read"] != r["text"]][:15]
    write_result(
        "number_reading",
        {
            "reader": "blob segmentation + " + str(predictor.manifest.get("model")),
            "numbers_per_condition": arguments.count,
            "conditions": by_condition,
            "six_digit_number_warm_ms": round(1e3 * statistics.median(seconds), 2),
            "some_mistakes": [
                {k: r[k] for k in ("text", "read", "gap", "condition")} for r in mistakes
            ],
            "targets_of_issue_11": {
                "clean_exact_length_at_most_6": ">= 0.97",
                "photo_exact": ">= 0.90",
                "six_digit_warm_ms": "<= 20",
            },
        },
    )


if __name__ == "__main__":
    main()
