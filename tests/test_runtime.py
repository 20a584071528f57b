"""The NumPy runtime against Keras itself, on models with random weights (no training needed)."""

from __future__ import annotations

import numpy as np
import pytest

from digitlab import runtime


def keras_and_numpy(model, inputs):
    exported = runtime.export(model)
    assert exported is not None
    specs = __import__("json").loads(str(exported.pop("spec")))
    return model.predict(inputs, verbose=0), runtime.NumpyModel(specs, exported)(inputs)


def randomise_batch_norm(model, rng):
    """Non-trivial moving statistics, as after training (fresh ones are 0 and 1)."""
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.set_weights(
                [rng.uniform(0.5, 1.5, w.shape).astype("float32") for w in layer.get_weights()]
            )


def test_a_cnn_runs_the_same_in_numpy_as_in_keras():
    import keras
    from keras import layers

    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            layers.RandomTranslation(0.1, 0.1),  # augmentation: nothing at inference
            layers.Conv2D(8, 5, padding="same", use_bias=False),
            layers.BatchNormalization(),
            layers.ReLU(),
            layers.Conv2D(12, 3, strides=2, padding="same", activation="relu"),  # 28 -> 14
            layers.MaxPooling2D(),  # 14 -> 7
            layers.Conv2D(16, 3, activation="relu"),  # valid: 7 -> 5
            layers.AveragePooling2D(pool_size=2, strides=1),  # 5 -> 4
            layers.Conv2D(10, 3, strides=2, padding="same"),  # 4 -> 2, odd padding split
            layers.BatchNormalization(center=False),
            layers.GlobalAveragePooling2D(),
            layers.Dropout(0.3),
            layers.Dense(10, activation="softmax"),
        ]
    )
    rng = np.random.default_rng(0)
    randomise_batch_norm(model, rng)
    inputs = rng.uniform(0, 1, (16, 28, 28, 1)).astype("float32")
    expected, actual = keras_and_numpy(model, inputs)
    np.testing.assert_allclose(actual, expected, atol=1e-5)


def test_the_tutorial_mlp_runs_the_same():
    from digitlab import models

    model = models.build_mlp()
    inputs = np.random.default_rng(1).uniform(0, 1, (32, 784)).astype("float32")
    expected, actual = keras_and_numpy(model, inputs)
    np.testing.assert_allclose(actual, expected, atol=1e-6)


def test_digitlabs_cnn_runs_the_same():
    from digitlab import models

    model = models.build_cnn()
    rng = np.random.default_rng(2)
    randomise_batch_norm(model, rng)
    inputs = rng.uniform(0, 1, (16, 28, 28, 1)).astype("float32")
    expected, actual = keras_and_numpy(model, inputs)
    np.testing.assert_allclose(actual, expected, atol=1e-5)


@pytest.mark.parametrize("build", ["functional", "unknown layer", "leaky relu"])
def test_what_numpy_cannot_run_is_left_to_keras(build):
    import keras
    from keras import layers

    if build == "functional":  # may branch: the runtime only runs a chain of layers
        inputs = keras.Input((4,))
        model = keras.Model(inputs, layers.Dense(2)(inputs))
    elif build == "unknown layer":
        model = keras.Sequential([keras.Input((4, 4, 1)), layers.Conv2DTranspose(2, 3)])
    else:
        model = keras.Sequential([keras.Input((4,)), layers.ReLU(negative_slope=0.1)])
    assert runtime.export(model) is None


def test_readers_side_by_side_give_each_ones_output_in_keras_numpy_and_onnx():
    """``models.reader_ensemble``: grouped convolutions hold each reader in its own channels;
    Keras, the NumPy runtime and ONNX all give each reader's own output, side by side."""
    import keras
    import onnxruntime

    from digitlab import export, models

    rng = np.random.default_rng(3)
    readers = []
    for seed in (0, 1):
        keras.utils.set_random_seed(seed)
        readers.append(models.build_reader())
        randomise_batch_norm(readers[-1], rng)
    inputs = rng.uniform(0, 1, (4, 28, 224, 1)).astype("float32")
    alone = [reader.predict(inputs, verbose=0) for reader in readers]
    assert np.abs(alone[0] - alone[1]).max() > 0.05  # two different readers
    ensemble = models.reader_ensemble(readers)
    assert ensemble.count_params() == 2 * readers[0].count_params()
    expected, actual = keras_and_numpy(ensemble, inputs)
    np.testing.assert_allclose(models.member_steps(expected), np.stack(alone, axis=1), atol=1e-6)
    np.testing.assert_allclose(actual, expected, atol=1e-6)
    exported = runtime.export(ensemble)
    specs = __import__("json").loads(str(exported.pop("spec")))
    onnx_model = export.onnx_model(runtime.NumpyModel(specs, exported), (28, 224, 1), "readers")
    session = onnxruntime.InferenceSession(onnx_model.SerializeToString())
    (from_onnx,) = session.run(None, {export.INPUT_NAME: inputs})
    np.testing.assert_allclose(from_onnx, expected, atol=1e-5)


def test_a_grouped_convolution_whose_channels_do_not_split_is_refused_at_load(tmp_path):
    from digitlab import DigitlabError

    weights = {"0/0": np.zeros((3, 3, 1, 4), np.float32)}  # 1 channel cannot split in 2 groups
    spec = [{"kind": "Conv2D", "activation": "linear", "strides": [1, 1], "padding": "same",
             "groups": 2, "weights": 1}]  # fmt: skip
    np.savez(tmp_path / "inference.npz", spec=np.array(__import__("json").dumps(spec)), **weights)
    with pytest.raises(DigitlabError, match="do not fit together"):
        runtime.NumpyModel.load(tmp_path / "inference.npz", (8, 8, 1))
