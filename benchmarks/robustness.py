"""How well digitlab reads "photos" of digits, against clean MNIST and a naive baseline.

Each MNIST test digit becomes a photo-like file: a 64-320 px canvas, the digit at a random place
and size, dark ink on light paper (some light-on-dark), thin or thick strokes, uneven lighting,
noise, blur, a colour tint and JPEG artefacts. The files go through `digitlab predict --json`
end to end. Compared with: the same model on the clean 28x28 digits, and a naive baseline that
resizes the whole photo to 28x28 (what a tutorial user would first try).
Target: photo accuracy within 2 points of clean accuracy.

Then other people's handwriting (issue #11, part 3): each of ``augment.HANDWRITING_CONDITIONS``
(low resolution: digits 8-16 px tall, heavy blur, thick marker, thin pen, slant, elastic
distortion, broken and hollow strokes) applied to the same test digits, scanned as a 112 px
dark-on-white image and read through the same preprocessing, each reported separately.
Target: no condition more than 3 points below the clean digits read the same way.

    python benchmarks/robustness.py [--run DIR] [--count 2000] [--seed 0]
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter
from scipy import ndimage

from _common import write_result
from digitlab import augment, datasets, synthetic
from digitlab.predict import Predictor


def handwriting_conditions(predictor: Predictor, images, labels, seed: int) -> dict:
    """Accuracy on each other-handwriting condition, and on the clean scans, via preprocess."""
    rng = np.random.default_rng(seed)
    conditions = {"clean_scan": lambda image, rng: image, **augment.HANDWRITING_CONDITIONS}
    results = {}
    for name, condition in conditions.items():
        scans = [synthetic.scanned(condition(d.astype(np.float32) / 255, rng)) for d in images]
        answers = [a for _, a in predictor.predict_many(list(enumerate(scans)))]
        read = np.array([getattr(a, "label", -1) for a in answers])
        results[name] = round(float(np.mean(read == labels)), 4)
    clean = results["clean_scan"]
    worst = min(results, key=results.get)
    return {
        "accuracy": results,
        "worst": worst,
        "worst_minus_clean_points": round(100 * (results[worst] - clean), 2),
        "target": {"within_points": 3.0, "met": results[worst] >= clean - 0.03},
    }


def make_photo(digit: np.ndarray, rng: np.random.Generator) -> tuple[bytes, str, dict]:
    """One MNIST digit -> (file bytes, suffix, what was done)."""
    canvas_side = int(rng.integers(64, 321))
    digit_side = int(canvas_side * rng.uniform(0.3, 0.85))
    ink = (
        np.asarray(
            Image.fromarray(digit).resize((digit_side, digit_side), Image.Resampling.BICUBIC),
            np.float32,
        )
        / 255
    )
    stroke = rng.choice(["thin", "normal", "thick"], p=[0.35, 0.35, 0.3])
    pixel = max(1, round(digit_side / 28))  # one MNIST pixel at this size
    if stroke == "thin":  # a ballpoint: far thinner than MNIST's pen
        ink = ndimage.grey_erosion(ink, size=(pixel + 1, pixel + 1))
    elif stroke == "thick":
        ink = ndimage.grey_dilation(ink, size=(pixel, pixel))
    paper, pen = rng.uniform(0.7, 0.98), rng.uniform(0.0, 0.3)
    image = np.full((canvas_side, canvas_side), paper, np.float32)
    top, left = (int(rng.integers(0, canvas_side - digit_side + 1)) for _ in range(2))
    region = image[top : top + digit_side, left : left + digit_side]
    image[top : top + digit_side, left : left + digit_side] = region * (1 - ink) + pen * ink
    lighting = rng.uniform(0.0, 0.35)  # a gradient in a random direction: uneven light
    angle = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:canvas_side, 0:canvas_side] / canvas_side
    image *= 1 - lighting * (np.cos(angle) * xs + np.sin(angle) * ys + 1) / 2
    noise = rng.uniform(0.0, 0.06)
    image += rng.normal(0, noise, image.shape)
    light_on_dark = rng.random() < 0.15
    if light_on_dark:
        image = 1 - image
    tint = rng.uniform(0.75, 1.0, 3)
    rgb = np.clip(image[..., None] * tint * 255, 0, 255).astype(np.uint8)
    photo = Image.fromarray(rgb, "RGB")
    blur = rng.uniform(0, 1.5)
    if blur > 0.3:
        photo = photo.filter(ImageFilter.GaussianBlur(blur))
    quality = int(rng.integers(30, 91))
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", quality=quality)
    conditions = {
        "canvas": canvas_side,
        "stroke": str(stroke),
        "light_on_dark": light_on_dark,
        "noise": round(noise, 3),
        "blur": round(blur, 2),
        "jpeg_quality": quality,
    }
    return buffer.getvalue(), ".jpg", conditions


def naive(photo: bytes) -> np.ndarray:
    """The tutorial user's first try: grayscale, resize the whole image to 28x28."""
    image = Image.open(io.BytesIO(photo)).convert("L").resize((28, 28), Image.Resampling.BILINEAR)
    return np.asarray(image, np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=None, help="run folder (default runs/latest)")
    parser.add_argument("--count", type=int, default=2000, help="MNIST test digits to use")
    parser.add_argument("--seed", type=int, default=0)
    arguments = parser.parse_args()

    predictor = Predictor.from_run(arguments.run)
    _, (x_test, y_test) = datasets.load_data("mnist", report=lambda line: None)
    images, labels = x_test[: arguments.count], y_test[: arguments.count]
    rng = np.random.default_rng(arguments.seed)
    clean = predictor.predict_digits(images).argmax(axis=1)

    with tempfile.TemporaryDirectory(prefix="digitlab-photos-") as folder:
        photos, conditions, naive_inputs = [], [], []
        for index, digit in enumerate(images):
            data, suffix, done = make_photo(digit, rng)
            path = Path(folder) / f"{index:05d}{suffix}"
            path.write_bytes(data)
            photos.append(path)
            conditions.append(done)
            naive_inputs.append(naive(data))
        Image.open(photos[0]).save(Path(__file__).parent / "results" / "robustness-sample.png")
        started = time.perf_counter()
        command = [str(Path(sys.executable).with_name("digitlab")), "predict", "--json", folder]
        if arguments.run:
            command[2:2] = ["--run", str(arguments.run)]
        output = subprocess.run(command, capture_output=True, text=True, check=False).stdout
        seconds = time.perf_counter() - started
    records = {Path(r["path"]).name: r for r in map(json.loads, output.splitlines())}
    photo_labels = np.array([records[p.name].get("label", -1) for p in photos])
    naive_labels = predictor.predict_digits(np.stack(naive_inputs)).argmax(axis=1)

    clean_accuracy = float(np.mean(clean == labels))
    photo_accuracy = float(np.mean(photo_labels == labels))
    by_condition = {}
    for key, test in {
        "thin": lambda c: c["stroke"] == "thin",
        "thick": lambda c: c["stroke"] == "thick",
        "light_on_dark": lambda c: c["light_on_dark"],
        "noisy (sigma > 0.04)": lambda c: c["noise"] > 0.04,
        "jpeg quality < 50": lambda c: c["jpeg_quality"] < 50,
    }.items():
        chosen = np.array([test(c) for c in conditions])
        by_condition[key] = {
            "count": int(chosen.sum()),
            "accuracy": float(np.mean(photo_labels[chosen] == labels[chosen])),
        }
    model = predictor.manifest.get("model")
    write_result(
        "robustness" if model == "mlp" else f"robustness_{model}",  # one file per model
        {
            "model": predictor.manifest.get("model"),
            "run": str(arguments.run or "runs/latest"),
            "count": int(len(labels)),
            "seed": arguments.seed,
            "clean_accuracy": clean_accuracy,
            "photo_accuracy": photo_accuracy,
            "naive_baseline_accuracy": float(np.mean(naive_labels == labels)),
            "photo_minus_clean_points": round(100 * (photo_accuracy - clean_accuracy), 2),
            "unreadable": int(np.sum(photo_labels == -1)),
            "by_condition": by_condition,
            "other_handwriting": handwriting_conditions(predictor, images, labels, arguments.seed),
            "predict_seconds": round(seconds, 2),
            "images_per_second": round(len(photos) / seconds),
            "target": {"within_points": 2.0, "met": photo_accuracy >= clean_accuracy - 0.02},
        },
    )


if __name__ == "__main__":
    main()
