"""A reader of several members (``--members``): each member is the reader trained alone with its
seed, the members read together, and the run folder reads the same in Keras and NumPy."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from digitlab import DigitlabError, artifacts, datasets, models, runtime, training
from digitlab.config import STRIP_WIDTH, TrainConfig
from digitlab.predict import Predictor
from digitlab.preprocess import PreparedStrip

pytestmark = pytest.mark.slow

SMALL = {"numbers": 192, "epochs": 1, "batch_size": 32}


def trained(config: TrainConfig, data) -> training.TrainResult:
    return training.train(config, data, report=lambda line: None, verbose=0)


def saved(result: training.TrainResult, data, root) -> Path:
    """``result`` as a run folder under ``root``."""
    (x_train, y_train), (x_test, y_test) = data
    arrays = dict(zip(datasets.ROLES, (x_train, y_train, x_test, y_test), strict=True))
    raw = {role: datasets.encode_idx(array) for role, array in arrays.items()}
    files = datasets.DataFiles(datasets.get_spec("mnist"), raw, "made by the test")
    return artifacts.save_run(result, files, x_test, y_test, root=root)


def trainable(model) -> list[np.ndarray]:
    return [np.asarray(weights) for weights in model.trainable_weights]


def test_each_member_is_the_reader_trained_alone_with_its_seed(tiny_data, tmp_path):
    reader = models.get("reader")
    pair = trained(reader.config(members=2, seed=3, **SMALL), tiny_data)
    alone = trained(reader.config(seed=4, **SMALL), tiny_data)
    ensemble = [layer for layer in pair.model.layers if layer.weights]
    second = [layer for layer in alone.model.layers if layer.weights]
    assert len(ensemble) == len(second)
    for joined, own in zip(ensemble, second, strict=True):
        for both, weights in zip(joined.get_weights(), own.get_weights(), strict=True):
            np.testing.assert_allclose(np.split(both, 2, axis=-1)[1], weights, atol=1e-6)
    assert pair.config.members == 2 and "loss_member_2" in pair.history
    assert pair.model.output_shape == (None, STRIP_WIDTH // 4, 2 * models.READER_CLASSES)

    # the run folder: the NumPy copy and Keras read the test numbers the same, as at training
    folder = saved(pair, tiny_data, tmp_path)
    strips = [PreparedStrip(strip, STRIP_WIDTH) for strip in pair.numbers.strips[:64]]
    fast, slow = Predictor.from_run(folder), Predictor.from_run(folder, use_keras=True)
    assert isinstance(fast.forward, runtime.NumpyModel)
    read = [answer.text for answer in fast.read_strips(strips)]
    assert read == [answer.text for answer in slow.read_strips(strips)]
    assert read == pair.numbers.readings[:64]


def test_members_that_disagree_answer_what_they_find_likeliest_together():
    def steps(*labels: int) -> np.ndarray:
        output = np.full((len(labels), models.READER_CLASSES), 0.01)
        output[np.arange(len(labels)), labels] = 0.9
        return output

    # member 1's best path reads "7" (class 8), with a "1" (class 2) a close second to blank
    # at step 1; member 2 reads "17" surely
    first, second = steps(0, 0, 0, 8, 0, 0), steps(0, 2, 0, 8, 0, 0)
    first[1] = [0.6, 0.05 / 9, 0.35, *[0.05 / 9] * 8]
    members = np.stack([first, second])
    assert [d.label for d in models.readers_decode(members[:1])] == [7]  # alone: its own path
    assert [d.label for d in models.readers_decode(members[1:])] == [1, 7]
    assert [d.label for d in models.readers_decode(members)] == [1, 7]
    assert models.readers_log_likelihood(members, [1, 7]) > models.readers_log_likelihood(
        members, [7]
    )
    # and the other way round: member 2 only half sure of its "1", member 1 sure there is none
    second[1] = [0.45, 0.02, 0.53, *[0.0] * 8]
    first[1] = [0.98, 0.01, 0.01, *[0.0] * 8]
    assert [d.label for d in models.readers_decode(np.stack([first, second]))] == [7]


def test_a_reader_trained_further_starts_from_each_of_its_members(tiny_data, tmp_path):
    """``--from``: member k of the new reader starts from member k of the run's (its weights
    split back out of the joined model), then trains on numbers of its own seed."""
    reader = models.get("reader")
    pair = trained(reader.config(members=2, seed=3, **SMALL), tiny_data)
    folder = saved(pair, tiny_data, tmp_path / "base")
    members = models.reader_members(artifacts.load_run(folder).model)
    assert len(members) == 2
    strips = pair.numbers.strips[:16, ..., None].astype("float32") / 255
    np.testing.assert_allclose(  # split and joined again, it reads as it did
        models.reader_ensemble(members).predict_on_batch(strips),
        pair.model.predict_on_batch(strips),
        atol=1e-5,
    )
    # at a rate too small to move a weight, the reader trained further is the one it started from
    still = reader.config(members=2, seed=7, start_from=str(folder), learning_rate=1e-12, **SMALL)
    further = trained(still, tiny_data)
    for own, started in zip(trainable(further.model), trainable(pair.model), strict=True):
        np.testing.assert_allclose(own, started, atol=1e-6)
    # at the reader's own rate it moves from there, and its run says where it started
    moved = trained(dataclasses.replace(still, learning_rate=0.003), tiny_data)
    assert any(
        not np.allclose(own, started, atol=1e-4)
        for own, started in zip(trainable(moved.model), trainable(pair.model), strict=True)
    )
    manifest = artifacts.read_manifest(saved(moved, tiny_data, tmp_path / "further"))
    assert manifest["config"]["start_from"] == str(folder)
    assert manifest["started_from"]["run"] == str(folder)
    assert manifest["started_from"]["test_accuracy"] == pair.metrics["test_accuracy"]


def test_only_a_reader_of_as_many_members_is_trained_further(tiny_data, tmp_path):
    reader = models.get("reader")
    pair = saved(trained(reader.config(members=2, seed=3, **SMALL), tiny_data), tiny_data, tmp_path)
    with pytest.raises(
        DigitlabError, match="a reader of 2 member.s., not 3: train it further with --members 2"
    ):
        trained(reader.config(members=3, start_from=str(pair), **SMALL), tiny_data)
    mlp = models.get("mlp").config(epochs=1)
    digits = saved(trained(mlp, tiny_data), tiny_data, tmp_path / "mlp")
    with pytest.raises(DigitlabError, match="is a mlp .one digit per image., not a number reader"):
        trained(reader.config(start_from=str(digits), **SMALL), tiny_data)
