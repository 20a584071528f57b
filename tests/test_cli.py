"""The command line, in-process, on a tiny generated data set and on the real MNIST."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from digitlab.cli import cli


def invoke(*arguments: str):
    return CliRunner().invoke(cli, [str(a) for a in arguments], catch_exceptions=False)


@pytest.fixture
def trained_run(tiny_folder, tmp_path) -> tuple[Path, object]:
    result = invoke("train", "--dataset", tiny_folder, "--epochs", "3", "--batch-size", "32")
    assert result.exit_code == 0, result.output
    return tmp_path / "runs" / "latest", result


def test_train_shows_every_step_and_writes_a_run(trained_run):
    latest, result = trained_run
    output = result.output
    for step in range(1, 7):
        assert f"[{step}/6]" in output
    assert re.search(r"Epoch 3/3\n\d+/\d+ - \d+s - .*accuracy: [\d.]+ - loss: [\d.]+", output)
    assert "train accuracy" in output and "test accuracy" in output and "gap" in output
    assert re.search(r"true       (\d ){19}\d\n      predicted  (\d ){19}\d", output)
    assert latest.is_symlink()
    for name in ("model.keras", "metrics.json", "predictions.png", "history.png"):
        assert (latest / name).stat().st_size > 0
    manifest = json.loads((latest / "metrics.json").read_text())
    assert manifest["config"]["epochs"] == 3 and manifest["seed"] == 0
    assert len(manifest["history"]["loss"]) == 3 == len(manifest["epoch_seconds"])
    assert set(manifest["metrics"]) >= {
        "test_accuracy",
        "train_accuracy",
        "test_loss",
        "train_loss",
        "overfitting_gap",
    }
    assert len(manifest["data_sha256"]) == 4
    assert {"keras", "jax", "numpy", "python", "digitlab"} <= set(manifest["versions"])
    printed = float(re.search(r"test accuracy  ([\d.]+)", output).group(1))
    assert printed == pytest.approx(manifest["metrics"]["test_accuracy"], abs=1e-4)


def test_evaluate_reproduces_the_reported_accuracy(trained_run):
    latest, _ = trained_run
    result = invoke("evaluate", "--run", latest)
    assert result.exit_code == 0, result.output
    recorded = json.loads((latest / "metrics.json").read_text())["metrics"]["test_accuracy"]
    measured = float(re.search(r"test accuracy  ([\d.]+)", result.output).group(1))
    assert measured == pytest.approx(recorded, abs=1e-4)
    assert "(same)" in result.output


def test_show_prints_and_plots_a_slice(trained_run, tmp_path):
    latest, _ = trained_run
    output = tmp_path / "slice.png"
    result = invoke("show", "--start", "5", "--count", "7", "--output", output)
    assert result.exit_code == 0, result.output
    assert "digits 5-11 of the test set" in result.output
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert invoke("show", "--start", "100").output.strip().endswith("(99)")


def test_same_seed_same_metrics(tiny_folder, tmp_path):
    runs = []
    for _ in range(2):
        assert invoke("train", "--dataset", tiny_folder, "--epochs", "2").exit_code == 0
        latest = (tmp_path / "runs" / "latest").resolve()
        runs.append(json.loads((latest / "metrics.json").read_text()))
    assert runs[0]["metrics"] == runs[1]["metrics"]
    assert runs[0]["history"] == runs[1]["history"]
    different_seed = invoke("train", "--dataset", tiny_folder, "--epochs", "2", "--seed", "7")
    assert different_seed.exit_code == 0
    latest = (tmp_path / "runs" / "latest").resolve()
    assert json.loads((latest / "metrics.json").read_text())["history"] != runs[0]["history"]


def test_validation_split_records_validation_curves(tiny_folder, tmp_path):
    result = invoke(
        "train", "--dataset", tiny_folder, "--epochs", "2", "--validation-split", "0.2", "--summary"
    )
    assert result.exit_code == 0, result.output
    assert "Total params" in result.output
    manifest = json.loads((tmp_path / "runs" / "latest" / "metrics.json").read_text())
    assert len(manifest["history"]["val_accuracy"]) == 2


def test_the_cnn_trains_with_its_own_defaults_and_every_command_uses_it(tiny_folder, tmp_path):
    result = invoke("train", "--model", "cnn", "--dataset", tiny_folder, "--epochs", "2")
    assert result.exit_code == 0, result.output
    assert (
        "would give them, 11% more digits with hollow strokes read back, 10% more photographed "
        "and read back (the last 1 epoch: the digits as they are)" in result.output
    )
    assert "with hollow strokes and read them back through preprocessing" in result.output
    assert "photographed on paper and read them back through preprocessing" in result.output
    assert "for the 'not a digit' output" in result.output
    assert "warm-up to 0.003, then cosine decay" in result.output
    assert "holding out 25 images for validation" in result.output  # 1/12 of 300
    assert re.search(r"kept epoch [12] \(lowest validation loss", result.output)
    latest = tmp_path / "runs" / "latest"
    manifest = json.loads((latest / "metrics.json").read_text())
    assert manifest["model"] == "cnn" and manifest["input_shape"] == [28, 28, 1]
    assert manifest["config"]["batch_size"] == 256 and manifest["config"]["augment"] is True
    assert manifest["best_epoch"] in (1, 2)
    assert (latest / "inference.npz").exists()  # predicts without Keras
    evaluated = invoke("evaluate")
    assert "(same)" in evaluated.output, evaluated.output
    assert "digits 0-19" in invoke("show").output
    from PIL import Image

    from conftest import make_digits

    image = tmp_path / "digit.png"
    Image.fromarray(make_digits(1, seed=5)[0][0]).save(image)
    predicted = invoke("predict", image, "--json")
    assert predicted.exit_code == 0, predicted.output
    assert 0 <= json.loads(predicted.output)["label"] <= 9


def test_early_stopping_from_the_command_line(tiny_folder, tmp_path):
    result = invoke(
        "train",
        "--dataset",
        tiny_folder,
        "--epochs",
        "40",
        "--batch-size",
        "16",
        "--validation-split",
        "0.2",
        "--early-stopping",
        "1",
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "runs" / "latest" / "metrics.json").read_text())
    losses, best = manifest["history"]["val_loss"], manifest["best_epoch"]
    assert losses[best - 1] == min(losses)
    assert f"kept epoch {best}" in result.output
    # 240 images, 15 steps per epoch: validation loss stops improving well before 40 epochs
    assert manifest["stopped_after"] == len(losses) == best + 1 < 40
    assert f"stopped early after epoch {len(losses)}" in result.output


def test_early_stopping_needs_a_validation_split(tiny_folder):
    result = CliRunner().invoke(
        cli, ["train", "--dataset", str(tiny_folder), "--early-stopping", "3"]
    )
    assert result.exit_code == 1
    assert "needs a validation split" in result.output


def test_data_info_for_a_folder(tiny_folder):
    result = invoke("data", "info", "--dataset", tiny_folder)
    assert result.exit_code == 0, result.output
    assert "images (300, 28, 28) uint8" in result.output
    assert "not pinned" in result.output
    as_json = json.loads(invoke("data", "info", "--dataset", tiny_folder, "--json").output)
    assert as_json["test"]["count_per_class"]["0"] == 10


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["evaluate", "--run", "/nonexistent"], "is not a run folder"),
        (["show", "--run", "/nonexistent"], "is not a run folder"),
        (["train", "--dataset", "emnist"], "unknown dataset 'emnist'"),
        (["train", "--epochs", "0"], "0 is not in the range"),
        (["train", "--validation-split", "1.5"], "1.5 is not in the range"),
        (["train", "--model", "resnet"], "Invalid value for '--model'"),
        (["train", "--members", "2"], "--members only goes with a number reader"),
        (["train", "--model", "reader", "--members", "0"], "0 is not in the range"),
        (["train", "--numbers", "9"], "--numbers only goes with a number reader"),
        (["train", "--from", "/nonexistent"], "--from only goes with a number reader"),
        (["train", "--model", "reader", "--from", "/nonexistent"], "is not a run folder"),
        (["train", "--learning-rate", "0"], "0 is not in the range"),
        (["data", "fetch", "--dataset", "mnist", "--from", "/nonexistent"], None),
    ],
)
def test_bad_input_is_one_line_and_non_zero(arguments, message, monkeypatch):
    monkeypatch.setenv("DIGITLAB_OFFLINE", "1")
    result = CliRunner().invoke(cli, arguments)
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)
    if message:
        assert message in result.output
    else:
        assert "/nonexistent does not exist" in result.output
        assert "skipped, DIGITLAB_OFFLINE is set" in result.output


@pytest.mark.parametrize(
    ("damaged", "command"),
    [
        ("model.keras", ["evaluate", "--keras"]),
        ("inference.npz", ["evaluate"]),
        ("inference.npz", ["show"]),
        ("inference.npz", ["report"]),
    ],
)
def test_a_damaged_model_file_is_a_clear_error(trained_run, damaged, command):
    latest, _ = trained_run
    whole = (latest / damaged).read_bytes()
    (latest / damaged).write_bytes(whole[: len(whole) // 2])  # truncated, as by a full disk
    result = CliRunner().invoke(cli, [*command, "--run", str(latest)])
    assert result.exit_code == 1
    assert result.output.startswith("Error: cannot load")
    assert damaged in result.output and "damaged" in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.slow
def test_the_tutorial_on_real_mnist(real_mnist, tmp_path):
    """The tutorial's promise: 5 epochs at batch 128 give >= 97.5% and the first 20 right."""
    result = invoke("train")
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "runs" / "latest" / "metrics.json").read_text())
    assert manifest["metrics"]["test_accuracy"] >= 0.975
    assert manifest["metrics"]["train_accuracy"] > manifest["metrics"]["test_accuracy"]
    expected = [7, 2, 1, 0, 4, 1, 4, 9, 5, 9, 0, 6, 9, 0, 1, 5, 9, 7, 3, 4]
    right = sum(
        p == t for p, t in zip(manifest["first_predictions"]["labels"], expected, strict=True)
    )
    assert right >= 19
    assert manifest["data_sha256"]["train-images-idx3-ubyte"].startswith("ba891046")
