"""Training pieces without a full run: keeping the best epoch, early stopping, the schedule."""

from __future__ import annotations

import numpy as np
import pytest

from digitlab import DigitlabError, models, training
from digitlab.config import NUM_CLASSES, TrainConfig


def tiny_model():
    import keras

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    return model


def run_epochs(callback, model, validation_losses):
    """Drive the callback as fit() would, with weights that say which epoch they are from."""
    callback.set_model(model)
    callback.on_train_begin()
    for epoch, loss in enumerate(validation_losses):
        model.set_weights([np.full((2, 1), epoch + 1.0), np.zeros(1)])
        callback.on_epoch_end(epoch, {"loss": 0.0, "val_loss": loss})
        if model.stop_training:
            break
    callback.on_train_end()
    return epoch + 1


def test_keep_best_restores_the_lowest_validation_loss_epoch():
    model = tiny_model()
    keep = training._keep_best(patience=0)
    epochs_run = run_epochs(keep, model, [0.9, 0.4, 0.5, 0.45, 0.6])
    assert epochs_run == 5 and keep.stopped_after == 0
    assert keep.best_epoch == 2
    assert model.get_weights()[0][0, 0] == 2.0  # epoch 2's weights are back


def test_early_stopping_waits_patience_epochs_after_the_best():
    model = tiny_model()
    keep = training._keep_best(patience=2)
    epochs_run = run_epochs(keep, model, [0.9, 0.4, 0.5, 0.45, 0.3, 0.2])
    assert epochs_run == 4 and keep.stopped_after == 4
    assert keep.best_epoch == 2 and model.get_weights()[0][0, 0] == 2.0


def test_without_validation_nothing_is_kept():
    model = tiny_model()
    keep = training._keep_best(patience=3)
    keep.set_model(model)
    keep.on_epoch_end(0, {"loss": 1.0})
    keep.on_train_end()
    assert keep.best_epoch == 0 and not model.stop_training


def test_warmup_cosine_schedule_rises_then_falls_to_zero():
    config = models.get("cnn").config()
    schedule = training.learning_rate(config, total_steps=800)
    rates = [float(schedule(step)) for step in (0, 50, 100, 400, 800)]
    assert rates[0] == pytest.approx(0.0, abs=1e-9)
    assert rates[1] == pytest.approx(config.learning_rate / 2, rel=1e-3)  # warm-up: 1/8
    assert rates[2] == pytest.approx(config.learning_rate, rel=1e-3)
    assert 0 < rates[3] < rates[2] and rates[4] == pytest.approx(0.0, abs=1e-9)
    assert training.learning_rate(TrainConfig(), total_steps=800) == 0.001


def test_model_defaults_and_overrides():
    cnn = models.get("cnn").config(epochs=3, batch_size=None)
    assert cnn.epochs == 3 and cnn.batch_size == 256 and cnn.augment
    assert models.get("mlp").config() == TrainConfig()
    assert not models.get("cnn").config(augment=False).augment


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"early_stopping": 2}, "needs a validation split"),
        ({"schedule": "cyclic"}, "unknown schedule"),
        ({"validation_split": 0.999}, "no training images left"),
    ],
)
def test_bad_settings_are_clear_errors(changes, message, tiny_data):
    with pytest.raises(DigitlabError, match=message):
        training.train(TrainConfig(**changes), tiny_data, report=lambda line: None, verbose=0)


def test_plain_final_epochs_are_unaugmented_and_at_most_half_the_run():
    images = np.random.default_rng(0).integers(0, 256, (40, 28, 28), dtype=np.uint8)
    labels = np.zeros(40, np.uint8)
    config = models.get("cnn").config(epochs=4, batch_size=40)
    assert training.plain_epochs(config) == 2
    assert training.plain_epochs(models.get("cnn").config(epochs=3)) == 1
    assert training.plain_epochs(models.get("cnn").config(augment=False)) == 0
    batches = training.augmented_batches(images, labels, config, (28, 28, 1))
    plain = images.astype(np.float32)[..., None] / 255
    seen = []
    for _ in range(config.epochs):
        batch, _ = batches[0]
        # the same digits in a new order: compare as sorted sets of images
        seen.append(
            np.array_equal(
                np.sort(batch.reshape(40, -1), axis=0), np.sort(plain.reshape(40, -1), axis=0)
            )
        )
        batches.on_epoch_end()
    assert seen == [False, False, True, True]


def test_batches_with_non_digits_split_evenly_over_a_process_devices():
    images = np.zeros((40, 28, 28), np.uint8)
    config = models.get("cnn").config(batch_size=16, non_digit_share=0.2)  # 3.2 non-digits
    non_digits = np.full((10, 28, 28), 255, np.uint8)
    for devices, size in ((1, 16 + 3), (2, 16 + 2)):
        batches = training.augmented_batches(
            images, np.zeros(40, np.uint8), config, (28, 28, 1), non_digits, devices
        )
        batch, labels = batches[0]
        assert len(batch) == size and (labels == NUM_CLASSES).sum() == size - 16


def test_non_digits_get_other_writers_conditions_like_the_digits(monkeypatch):
    """No shortcut for the "not a digit" output: a scanned or blurred look is not a digit's mark."""
    given = []
    monkeypatch.setattr(
        training, "other_handwriting", lambda images, rng, share: given.append(len(images))
    )
    config = models.get("cnn").config(batch_size=16, non_digit_share=0.25)
    batches = training.augmented_batches(
        np.zeros((40, 28, 28), np.uint8), np.zeros(40, np.uint8), config, (28, 28, 1),
        np.full((10, 28, 28), 255, np.uint8),
    )  # fmt: skip
    batch, labels = batches[0]
    assert given == [len(batch)] == [16 + 4] and (labels == NUM_CLASSES).sum() == 4


TUTORIAL_LABELS = [7, 2, 1, 0, 4, 1, 4, 9, 5, 9, 0, 6, 9, 0, 1, 5, 9, 7, 3, 4]


def assert_rejects_non_digits(predictor, x_test: np.ndarray, digits_at_most: float) -> None:
    """The "not a digit" rule: few test digits rejected, most made non-digits (other seeds than
    training's) rejected; the answers say so and keep their likeliest digit."""
    from digitlab import synthetic

    threshold = predictor.rejection_threshold
    assert predictor.manifest["rejection"]["score"] == "1 - P(not a digit)" and 0 < threshold < 1
    _, digit_scores = predictor.scored_digits(x_test)
    assert np.mean(digit_scores < threshold) <= digits_at_most
    others = synthetic.prepared_non_digits(300, seed=77)
    answers = predictor.predict(list(others))
    assert np.mean([answer.is_digit is False for answer in answers]) >= 0.85
    assert all(answer.label in range(10) for answer in answers)


@pytest.mark.slow
def test_the_cnn_trains_with_its_defaults_on_real_mnist(real_mnist, tmp_path):
    """The CNN as `digitlab train --model cnn` trains it (augmentation, other handwriting,
    non-digits, the validation split, the rule's calibration), for 3 of its 12 epochs (~2
    minutes; 99.14% measured). Its saved copy predicts the same without Keras.

    The accuracy of all 12 epochs is the ready-made CNN's (the next test) and
    benchmarks/model_accuracy.py's, over seeds.
    """
    from digitlab import artifacts, datasets
    from digitlab.predict import Predictor

    data = datasets.to_arrays(real_mnist)
    config = models.get("cnn").config(epochs=3)
    result = training.train(config, data, report=lambda line: None, verbose=0)
    assert result.metrics["test_accuracy"] >= 0.99, result.metrics
    right = sum(p == t for p, t in zip(result.first_labels, TUTORIAL_LABELS, strict=True))
    assert right >= 19 and result.best_epoch is not None
    _, (x_test, y_test) = data
    folder = artifacts.save_run(result, real_mnist, x_test, y_test, root=tmp_path)
    predictor = Predictor.from_run(folder)
    probabilities = predictor.predict_digits(x_test[:500])
    np.testing.assert_allclose(probabilities, result.test_probabilities[:500], atol=1e-4)
    assert_rejects_non_digits(predictor, x_test, digits_at_most=0.015)


@pytest.mark.slow
def test_the_ready_cnn_reaches_its_accuracy_on_real_mnist(real_mnist):
    """The shipped CNN: `digitlab train --model cnn --seed 0` with every default (`make
    ready-models` trains it again and checks the result). A single seed is held to the floor
    every seed must clear, 99.4%; its manifest's figure is the one measured here."""
    from digitlab import artifacts, datasets
    from digitlab.manifest import run_config
    from digitlab.predict import Predictor

    predictor = Predictor.from_run(artifacts.ready_run("digit"))
    assert run_config(predictor.manifest) == models.get("cnn").config(seed=0).to_dict()
    _, (x_test, y_test) = datasets.to_arrays(real_mnist)
    labels = predictor.predict_digits(x_test).argmax(axis=1)
    accuracy = float(np.mean(labels == y_test))
    assert accuracy >= 0.994
    assert accuracy == pytest.approx(predictor.manifest["metrics"]["test_accuracy"], abs=1e-4)
    assert list(labels[:20]) == TUTORIAL_LABELS
    assert_rejects_non_digits(predictor, x_test, digits_at_most=0.01)
    # hollow (outlined) strokes, read as a user's scan of them: 75% before the CNN trained on
    # such digits (hollow_share), 94.8% measured on 2,000 by benchmarks/robustness.py
    from digitlab import synthetic

    hollow, kept = synthetic.hollow_digits_read_back(x_test[:400], seed=5)
    assert np.mean(predictor.predict_digits(hollow).argmax(axis=1) == y_test[kept]) >= 0.9
