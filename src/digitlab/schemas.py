"""The JSON shapes of digitlab's answers, as schemas: what ``Prediction.to_dict`` and
``NumberPrediction.to_dict`` produce, for ``digitlab predict --json`` and the HTTP API alike.

The API declares them in its OpenAPI document; the tests check both outputs against them. They
live apart from ``predict`` so that predicting does not import pydantic.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from digitlab.config import NUM_CLASSES


class DigitAnswer(BaseModel):
    """The JSON of one digit (``Prediction.to_dict``)."""

    model_config = ConfigDict(extra="forbid")
    label: int = Field(ge=0, lt=NUM_CLASSES)
    label_name: str
    confidence: float = Field(ge=0, le=1)
    probabilities: list[float] = Field(min_length=NUM_CLASSES, max_length=NUM_CLASSES)
    is_digit: bool | None = Field(
        None,
        description="whether it looks like a digit at all (false: a letter, a doodle, a photo; "
        "the label is still the likeliest digit); absent when the model has no such rule",
    )
    digit_score: float | None = Field(
        None, ge=0, le=1, description="the score the 'not a digit' rule compares with its threshold"
    )
    x: float | None = Field(
        None, description="in a number: the digit's horizontal centre in the image, in pixels"
    )
    input_png: str | None = Field(None, description="the 28x28 input the model saw, base64 PNG")
    explanation_png: str | None = Field(
        None,
        description="with ?explain=true: a 28x28 red overlay for input_png, as opaque as each "
        "pixel mattered to the answer (occlusion), base64 PNG",
    )


class NumberAnswer(BaseModel):
    """The JSON of a written number (``NumberPrediction.to_dict``)."""

    model_config = ConfigDict(extra="forbid")
    text: str
    confidence: float = Field(
        ge=0, le=1, description="the chance that every digit is right: the digits' product"
    )
    reader: Literal["number reader", "segmentation"] = Field(
        description="what read it: the number reader (a model of whole numbers), or "
        "segmentation (cut into ink blobs, each read by the digit model)"
    )
    checked_by: str | None = Field(
        None,
        description="with the number reader: the digit model that also read each lone digit "
        "(each such digit's probabilities are both models' combined)",
    )
    digits: list[DigitAnswer]
    is_number: bool | None = Field(
        None,
        description="with a number reader that has the rule: whether it looks like a written "
        "number at all (false: a word, a doodle; the text is still the likeliest reading)",
    )
    number_score: float | None = Field(
        None, ge=0, le=1,
        description="the reading's probability per digit (and per member of the reader), which "
        "the 'not a number' rule compares with its threshold",
    )  # fmt: skip
    input_png: str | None = Field(
        None, description="what was read: the number reader's strip, or the digits side by side"
    )
