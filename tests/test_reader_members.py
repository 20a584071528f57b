"""A reader of several members (``--members``): each member is the reader trained alone with its
seed, the members read together, and the run folder reads the same in Keras and NumPy."""

from __future__ import annotations

import numpy as np
import pytest

from digitlab import artifacts, datasets, models, runtime, training
from digitlab.config import STRIP_WIDTH, TrainConfig
from digitlab.predict import Predictor
from digitlab.preprocess import PreparedStrip

pytestmark = pytest.mark.slow

SMALL = {"numbers": 192, "epochs": 1, "batch_size": 32}


def trained(config: TrainConfig, data) -> training.TrainResult:
    return training.train(config, data, report=lambda line: None, verbose=0)


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
    (x_train, y_train), (x_test, y_test) = tiny_data
    arrays = dict(zip(datasets.ROLES, (x_train, y_train, x_test, y_test), strict=True))
    raw = {role: datasets.encode_idx(array) for role, array in arrays.items()}
    files = datasets.DataFiles(datasets.get_spec("mnist"), raw, "made by the test")
    folder = artifacts.save_run(pair, files, x_test, y_test, root=tmp_path)
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
