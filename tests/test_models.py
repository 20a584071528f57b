"""Every registered model kind: builds, trains a step, is saved as a run, reloads, and runs in
the NumPy runtime exactly as in Keras; the number reader's CTC likelihood against Keras'."""

from __future__ import annotations

import numpy as np
import pytest

from digitlab import artifacts, datasets, models, training
from digitlab.config import TrainConfig
from digitlab.predict import Predictor


@pytest.mark.parametrize("name", list(models.MODELS))
def test_a_registered_model_trains_saves_reloads_and_runs_in_numpy(name, tiny_data, tmp_path):
    kind = models.get(name)
    assert kind.name == name and kind.description and len(kind.input_shape) in (1, 3)
    config = kind.config(
        epochs=1, batch_size=64, validation_split=0.0, augment=False, numbers=128
    )  # numbers: only a number reader composes them
    result = training.train(config, tiny_data, report=lambda line: None, verbose=0)
    assert result.input_shape == kind.input_shape
    files = datasets.DataFiles(
        datasets.get_spec("mnist"),
        {role: datasets.encode_idx(array) for role, array in _roles(tiny_data).items()},
        "made by the test",
    )
    _, (x_test, y_test) = tiny_data
    folder = artifacts.save_run(result, files, x_test, y_test, root=tmp_path)
    assert (folder / "inference.npz").is_file(), f"{name} has layers the NumPy runtime lacks"
    fast, keras_model = Predictor.from_run(folder), Predictor.from_run(folder, use_keras=True)
    if kind.reads == "number":  # its inputs are number strips, its output one row per step
        strips = result.numbers.strips[:32, ..., None].astype(np.float32) / 255
        np.testing.assert_allclose(fast.forward(strips), keras_model.forward(strips), atol=1e-5)
        assert fast.reads_numbers and fast.read_strips([]) == []
        return
    np.testing.assert_allclose(
        fast.predict_digits(x_test), keras_model.predict_digits(x_test), atol=1e-5
    )
    np.testing.assert_allclose(fast.predict_digits(x_test), result.test_probabilities, atol=1e-5)


def _roles(data: datasets.Arrays) -> dict[str, np.ndarray]:
    (x_train, y_train), (x_test, y_test) = data
    return {
        "train_images": x_train,
        "train_labels": y_train,
        "test_images": x_test,
        "test_labels": y_test,
    }


def test_a_kind_fills_only_what_the_caller_left_out():
    cnn = models.get("cnn")
    assert cnn.config().epochs == 12 and cnn.config(epochs=3).epochs == 3
    assert cnn.config(seed=None).seed == 0 and cnn.config(seed=7).seed == 7
    # an explicit 0 is a choice, not "unset": it overrides the kind's default
    assert cnn.config(validation_split=0.0).validation_split == 0.0
    assert models.get("mlp").config() == TrainConfig()


def test_an_unknown_model_is_a_clear_error():
    with pytest.raises(
        models.DigitlabError, match="unknown model 'rnn': choose one of mlp, cnn, reader"
    ):
        models.get("rnn")


def test_adding_a_kind_is_one_entry_and_the_cli_lists_it(monkeypatch):
    """A new kind registered in one place shows up in `digitlab train --help` and trains."""
    import importlib

    from click.testing import CliRunner

    extra = models.ModelKind(
        name="tiny",
        description="a test's one-layer model",
        build=lambda: models.build_mlp(),
        input_shape=(784,),
        defaults={"epochs": 2},
    )
    monkeypatch.setitem(models.MODELS, "tiny", extra)
    from digitlab import cli as cli_module

    reloaded = importlib.reload(cli_module)  # options are built from the registry at import
    try:
        help_text = " ".join(CliRunner().invoke(reloaded.cli, ["train", "--help"]).output.split())
        assert "tiny: a test's one-layer model" in help_text
        assert "tiny 2" in help_text  # its epochs default, listed beside the others'
    finally:
        monkeypatch.delitem(models.MODELS, "tiny")
        importlib.reload(cli_module)


@pytest.mark.parametrize("digits", [[], [7], [1, 1, 3], [2, 4, 2, 4, 5, 8, 0, 9]])
def test_ctc_log_likelihood_is_keras_ctc_loss(digits):
    """The reader's probability of a text, summed over its alignments, against Keras' CTC
    loss (its negative) on the same output: repeats need a blank between them, an empty text
    is blanks only."""
    import keras

    rng = np.random.default_rng(len(digits))
    logits = rng.normal(0, 2, (56, models.READER_CLASSES))
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    target = np.zeros((1, 10), np.int32)
    target[0, : len(digits)] = np.array(digits, np.int32) + 1
    loss = keras.ops.ctc_loss(
        target, np.log(probabilities)[None].astype("float32"), np.array([len(digits)]),
        np.array([56]), mask_index=0,
    )  # fmt: skip
    ours = models.ctc_log_likelihood(probabilities, digits)
    assert ours == pytest.approx(-float(np.asarray(loss)[0]), rel=1e-5)


@pytest.mark.parametrize("digits", [[], [4], [1, 1, 3], [9, 0, 0, 0, 2, 2]])
def test_the_members_are_scored_together_as_each_alone(digits):
    """readers_log_likelihood runs CTC's forward algorithm over all members at once: it must
    be the sum of each member's own, members of different minds (the first sure of the text,
    the other two unsure each in its own way) kept apart."""
    rng = np.random.default_rng(len(digits) + 10)
    members = rng.dirichlet(np.full(models.READER_CLASSES, 0.3), size=(3, 40))
    members[0, 5 : 5 + 3 * len(digits) : 3] = 0.0  # member 0 reads the text itself
    for index, digit in enumerate(digits):
        members[0, 5 + 3 * index, digit + 1] = 1.0
    together = models.readers_log_likelihood(members, digits)
    alone = [models.ctc_log_likelihood(steps, digits) for steps in members]
    assert together == pytest.approx(sum(alone), rel=1e-12)
    assert len(set(alone)) == 3


def test_the_reader_reads_each_strip_as_given_and_a_row_up_and_down_averaged():
    strips = np.zeros((2, 28, 224, 1), np.float32)
    strips[0, 4:24, 10:30] = 1.0  # a number fills the middle 20 rows
    strips[1, 4:24, 50:60] = 0.5
    rows = np.arange(28, dtype=np.float32)[None, :, None, None]
    seen = []

    def forward(batch: np.ndarray) -> np.ndarray:
        seen.append(batch)
        centre = (batch * rows).sum(axis=(1, 2, 3)) / batch.sum(axis=(1, 2, 3))
        return np.broadcast_to(centre[:, None, None], (len(batch), 56, 11)).copy()

    averaged = models.read_steps(forward, strips)
    [batch] = seen  # one call: every strip in each of the shifts
    assert len(batch) == len(models.READER_ROW_SHIFTS) * len(strips)
    np.testing.assert_allclose(batch.sum(axis=(1, 2, 3)), np.tile(strips.sum(axis=(1, 2, 3)), 3))
    centres = forward(batch)[:, 0, 0].reshape(3, 2)
    np.testing.assert_allclose(centres[:, 0], [13.5 + r for r in models.READER_ROW_SHIFTS])
    assert averaged.shape == (2, 56, 11)
    np.testing.assert_allclose(averaged[:, 0, 0], [13.5, 13.5])
