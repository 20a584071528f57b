"""The schema of a run's manifest (``metrics.json``): a run folder is untrusted input.

Anything that reads a manifest gets one that passed ``validate``, or a ``DigitlabError`` that
names the file and the field: a hand-edited, truncated or crafted run folder never becomes a
traceback, and never hides the other runs.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from digitlab import DigitlabError
from digitlab.config import IMAGE_SIDE, NUM_CLASSES, STRIP_WIDTH, TrainConfig

SHORT = 200  # characters in a name, a date or a label
PIXELS = IMAGE_SIDE * IMAGE_SIDE
STRIP_PIXELS = IMAGE_SIDE * STRIP_WIDTH  # a number reader's input


def _printable(value: str) -> str:
    if any(not character.isprintable() for character in value):
        raise ValueError("holds control characters")
    return value


class Metrics(BaseModel):
    model_config = ConfigDict(extra="allow")
    test_accuracy: float = Field(ge=0, le=1)
    test_loss: float = Field(ge=0)
    train_accuracy: float = Field(ge=0, le=1)
    train_loss: float = Field(ge=0)
    overfitting_gap: float | None = Field(default=None, ge=-1, le=1)


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="allow")
    dataset: str = Field(max_length=4096)
    epochs: int = Field(ge=1, le=100_000)
    batch_size: int = Field(ge=1, le=10_000_000)


class Rejection(BaseModel):
    model_config = ConfigDict(extra="allow")
    score: str = Field(max_length=SHORT)
    threshold: float = Field(ge=0, le=1)


class Manifest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1, max_length=SHORT)
    dataset: str = Field(min_length=1, max_length=SHORT)
    created: str = Field(default="", max_length=SHORT)
    seed: int | None = None
    config: RunConfig
    input_shape: list[int] = Field(min_length=1, max_length=3)
    label_names: list[str] = Field(min_length=NUM_CLASSES, max_length=NUM_CLASSES)
    metrics: Metrics
    history: dict[str, list[float]] = Field(default_factory=dict)
    best_epoch: int | None = Field(default=None, ge=1)
    stopped_after: int | None = Field(default=None, ge=1)
    epoch_seconds: list[float] = Field(default_factory=list)
    train_seconds: float = Field(default=0.0, ge=0)
    data_sha256: dict[str, str] = Field(default_factory=dict)
    data_source: str = Field(default="", max_length=4096)
    versions: dict[str, str] = Field(default_factory=dict)
    layers: list[dict] = Field(default_factory=list)
    # "digit": reads one digit per image; "number": a number reader, reads whole numbers
    reads: Literal["digit", "number"] = "digit"
    # the "not a digit" rule of a digit model; the "not a number" rule of a number reader
    rejection: Rejection | None = None

    @field_validator("model", "dataset", "created")
    @classmethod
    def _plain_text(cls, value: str) -> str:
        return _printable(value)

    @field_validator("label_names")
    @classmethod
    def _labels(cls, names: list[str]) -> list[str]:
        for name in names:
            if not 0 < len(name) <= SHORT:
                raise ValueError("each label name must be 1 to 200 characters")
            _printable(name)
        return names

    @field_validator("input_shape")
    @classmethod
    def _shape(cls, shape: list[int]) -> list[int]:
        if any(side < 1 for side in shape) or math.prod(shape) not in (PIXELS, STRIP_PIXELS):
            raise ValueError(
                f"must hold the {PIXELS} pixels of a 28x28 digit (e.g. [784]) or the "
                f"{STRIP_PIXELS} of a 28x{STRIP_WIDTH} number strip"
            )
        return shape


def validate(manifest: object, path: Path | str = "metrics.json") -> dict:
    """The checked manifest as a dict (unknown keys kept), or a DigitlabError naming the field."""
    if not isinstance(manifest, dict):
        raise DigitlabError(f"{path}: not a digitlab manifest (a JSON object is expected)")
    try:
        return Manifest.model_validate(manifest).model_dump()
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "(top level)"
        reason = first["msg"].removeprefix("Value error, ")
        raise DigitlabError(f"{path}: field {field!r}: {reason}") from None
    except RecursionError:
        raise DigitlabError(f"{path}: nested too deeply to be a manifest") from None


def run_config(manifest: dict) -> dict:
    """A run's training settings. A setting digitlab gained after the run was made reads as its
    default, which is what the run trained with (``members`` in a run from before it)."""
    return {**TrainConfig().to_dict(), **manifest["config"]}
