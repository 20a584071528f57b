"""Made training data is kept: the same arguments take it from $DIGITLAB_HOME/made, anything
else makes it again, and a damaged or unwritable folder only costs the time."""

from __future__ import annotations

import numpy as np

from conftest import make_digits
from digitlab import made, training
from digitlab.config import TrainConfig

CALLS: list[int] = []


def doubled(digits: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    CALLS.append(seed)
    return digits * 2, np.arange(len(digits)) + seed


def test_the_same_arguments_take_what_was_made_and_others_make_it_again():
    CALLS.clear()
    digits = np.arange(12, dtype=np.uint8).reshape(3, 2, 2)
    first, kept = made.made(doubled, digits, 5)
    assert not kept and CALLS == [5]
    again, kept = made.made(doubled, digits.copy(), 5)
    assert kept and CALLS == [5]
    for array, expected in zip(again, first, strict=True):
        np.testing.assert_array_equal(array, expected)
    other = digits.copy()
    other[2, 1, 1] += 1  # one pixel
    assert not made.made(doubled, other, 5)[1]
    assert not made.made(doubled, digits, 6)[1]
    assert CALLS == [5, 5, 6]


def test_a_damaged_entry_is_made_again(digitlab_home):
    CALLS.clear()
    digits = np.ones((4, 2, 2), np.uint8)
    made.made(doubled, digits, 1)
    (entry,) = (digitlab_home / "made").glob("*.npz")
    entry.write_bytes(entry.read_bytes()[:40])  # cut short, as by a full disk
    result, kept = made.made(doubled, digits, 1)
    assert not kept and CALLS == [1, 1]
    np.testing.assert_array_equal(result[0], digits * 2)
    assert made.made(doubled, digits, 1)[1]  # and kept again


def test_an_unwritable_home_still_gets_its_data(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("DIGITLAB_HOME", str(blocker))
    result, kept = made.made(doubled, np.zeros((1, 2, 2), np.uint8), 0)
    assert not kept and result[0].shape == (1, 2, 2)


def test_only_the_entries_used_last_are_kept(digitlab_home, monkeypatch):
    monkeypatch.setattr(made, "KEPT_ENTRIES", 2)
    digits = np.zeros((1, 2, 2), np.uint8)
    for seed in (1, 2, 3):
        made.made(doubled, digits, seed)
    assert len(list((digitlab_home / "made").glob("*.npz"))) == 2
    assert made.made(doubled, digits, 3)[1] and not made.made(doubled, digits, 1)[1]


def test_a_training_says_when_its_read_back_digits_were_made_before():
    images, labels = make_digits(24)
    config = TrainConfig(model="cnn", augment=True, hollow_share=0.5, photographed_share=0.25)
    lines: list[str] = []
    first = training._with_read_back_digits(images, labels, config, lines.append)
    assert not any("earlier training" in line for line in lines)
    lines.clear()
    second = training._with_read_back_digits(images, labels, config, lines.append)
    assert len(lines) == 2 and all("kept from an earlier training" in line for line in lines)
    for array, expected in zip(second, first, strict=True):
        np.testing.assert_array_equal(array, expected)
