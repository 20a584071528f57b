"""Run folders: published whole or not at all, named uniquely under concurrency, and read as
untrusted input (a broken one is named with its field; it never hides the others)."""

from __future__ import annotations

import json
import os
import shutil
import threading
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import keras
import numpy as np
import pytest
from click.testing import CliRunner

from digitlab import DigitlabError, artifacts, datasets, models, runtime, training
from digitlab.cli import cli
from digitlab.config import TrainConfig
from digitlab.predict import Predictor


@pytest.fixture(scope="module")
def tiny_result(tiny_data):
    """An MLP trained one epoch on the tiny data, and the DataFiles it was trained on."""
    result = training.train(
        TrainConfig(epochs=1, batch_size=64), tiny_data, report=lambda line: None, verbose=0
    )
    (x_train, y_train), (x_test, y_test) = tiny_data
    arrays = dict(zip(datasets.ROLES, (x_train, y_train, x_test, y_test), strict=True))
    raw = {role: datasets.encode_idx(array) for role, array in arrays.items()}
    return result, datasets.DataFiles(datasets.get_spec("mnist"), raw, "made by the test")


def save(tiny_result, tiny_data, root: Path) -> Path:
    result, files = tiny_result
    _, (x_test, y_test) = tiny_data
    return artifacts.save_run(result, files, x_test, y_test, root=root)


@pytest.fixture(scope="module")
def saved_run(tiny_result, tiny_data, tmp_path_factory) -> Path:
    return save(tiny_result, tiny_data, tmp_path_factory.mktemp("saved"))


def copy_run(saved_run: Path, root: Path, name: str) -> Path:
    """A copy of the saved run in ``root`` (quicker than saving again: no plots, no report)."""
    return Path(shutil.copytree(saved_run, root / name))


def test_save_run_writes_a_complete_folder_and_points_latest_at_it(
    tiny_result, tiny_data, tmp_path
):
    folder = save(tiny_result, tiny_data, tmp_path)
    names = {p.name for p in folder.iterdir()}
    assert names == {
        "model.keras",
        "inference.npz",
        "metrics.json",
        "predictions.png",
        "history.png",
        "report.html",
    }
    assert os.readlink(tmp_path / "latest") == folder.name  # relative: the folder can move
    page = (folder / "report.html").read_text()
    assert str(folder) in page and ".tmp" not in page  # the final name, not the temporary one
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    second = save(tiny_result, tiny_data, tmp_path)
    assert second != folder and os.readlink(tmp_path / "latest") == second.name


def test_trainings_finishing_at_once_get_a_folder_each(tiny_result, tiny_data, tmp_path):
    with ThreadPoolExecutor(4) as pool:
        folders = list(pool.map(lambda _: save(tiny_result, tiny_data, tmp_path), range(4)))
    assert len(set(folders)) == 4
    for folder in folders:
        assert artifacts.read_manifest(artifacts.resolve_run(folder))["model"] == "mlp"
        assert f"{folder}</p>" in (folder / "report.html").read_text().replace(" &middot;", "</p>")


def test_a_model_in_memory_is_called_while_other_threads_read_its_weights():
    """The report's second look at a model (its why-maps) while another thread reads the
    same model's weights, as a second training's save does: on JAX, Keras' ``predict``
    takes the weights out while it runs, and the other thread found none (CI, stop 31)."""
    model = models.build("mlp")
    digits = np.random.default_rng(0).integers(0, 256, (600, 28, 28), dtype=np.uint8)
    failures, done = [], threading.Event()

    def read_weights():
        while not done.is_set():
            try:
                [keras.ops.convert_to_numpy(weight) for weight in model.weights]
            except Exception as error:  # what the other thread would have met
                failures.append(error)
                return

    other = threading.Thread(target=read_weights)
    other.start()
    try:
        for _ in range(10):
            probabilities = Predictor.of_model(model).predict_digits(digits)
    finally:
        done.set()
        other.join()
    assert failures == []
    assert probabilities.shape == (600, 10)
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)


def test_a_keras_model_answers_several_threads_at_once(saved_run, tiny_data):
    """``--keras`` (the Keras model, not its NumPy copy) called from several threads at once:
    ``predict_on_batch`` handed the weights' memory to its result, and the next call found
    it gone."""
    predictor = Predictor.from_run(saved_run, use_keras=True)
    _, (x_test, _) = tiny_data
    alone = predictor.predict_digits(x_test)
    with ThreadPoolExecutor(3) as pool:
        together = list(pool.map(lambda _: predictor.predict_digits(x_test), range(30)))
    for probabilities in together:
        np.testing.assert_allclose(probabilities, alone, atol=1e-6)


def test_a_name_taken_while_saving_goes_to_the_next_one(
    tiny_result, tiny_data, tmp_path, monkeypatch
):
    """Another training publishes the planned name between our check and our rename."""
    real_rename, raced = artifacts._rename, []

    def racing(temporary, final):
        if not raced:  # the other training wins the first rename
            raced.append(final)
            final.mkdir()
            (final / "model.keras").write_text("the other training's")
        real_rename(temporary, final)

    monkeypatch.setattr(artifacts, "_rename", racing)
    folder = save(tiny_result, tiny_data, tmp_path)
    [taken] = raced
    assert folder != taken and folder.name.endswith("-mlp-2") or folder.name[:15] != taken.name[:15]
    assert f"{folder} &middot;" in (folder / "report.html").read_text()  # retitled
    assert (taken / "model.keras").read_text() == "the other training's"  # not overwritten


def test_a_failed_publish_keeps_the_trained_model(tiny_result, tiny_data, tmp_path, monkeypatch):
    def refuse(source, target):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(artifacts, "_rename", refuse)
    with pytest.raises(DigitlabError, match="it is kept in") as caught:
        save(tiny_result, tiny_data, tmp_path)
    kept = Path(str(caught.value).rsplit("kept in ", 1)[1])
    assert (kept / "model.keras").is_file() and (kept / "metrics.json").is_file()
    assert not (tmp_path / "latest").exists()


def test_an_unwritable_runs_folder_fails_before_training(tmp_path, tiny_folder, monkeypatch):
    (tmp_path / "runs-file").write_text("not a folder")
    monkeypatch.setenv("DIGITLAB_RUNS", str(tmp_path / "runs-file"))
    result = CliRunner().invoke(cli, ["train", "--dataset", str(tiny_folder), "--epochs", "1"])
    assert result.exit_code == 1
    assert "it is a file, not a folder" in result.output and "[2/6]" not in result.output


def test_an_incomplete_run_folder_is_named(saved_run, tmp_path):
    folder = copy_run(saved_run, tmp_path, "run")
    (folder / "model.keras").unlink()
    with pytest.raises(DigitlabError, match="model.keras is missing"):
        artifacts.resolve_run(folder)


def test_latest_missing_or_dangling_is_no_run(tmp_path, monkeypatch):
    monkeypatch.setenv("DIGITLAB_RUNS", str(tmp_path))
    monkeypatch.setattr(artifacts, "READY_DIR", tmp_path / "no-ready-models")
    with pytest.raises(artifacts.NoRunError):
        artifacts.resolve_run()  # no runs, and an installation without the ready models
    monkeypatch.undo()
    monkeypatch.setenv("DIGITLAB_RUNS", str(tmp_path))
    (tmp_path / "latest").symlink_to("gone")
    with pytest.raises(artifacts.NoRunError, match="points to a run that is gone"):
        artifacts.resolve_run()  # the user's run vanished: not silently the ready model
    result = CliRunner().invoke(cli, ["predict", "x.png"])
    assert result.exit_code == 1 and "run `digitlab train` first" in result.output


def test_with_no_runs_the_ready_models_answer(tmp_path, monkeypatch):
    monkeypatch.setenv("DIGITLAB_RUNS", str(tmp_path / "runs"))
    digit, reader = artifacts.resolve_run(), artifacts.latest_reader()
    assert digit == artifacts.ready_run("digit") and reader == artifacts.ready_run("number")
    manifest = artifacts.read_manifest(digit)
    assert manifest["model"] == "cnn" and manifest["metrics"]["test_accuracy"] >= 0.994
    assert manifest["data_sha256"]["t10k-images-idx3-ubyte"].startswith("0fa7898d")
    assert "make ready-models" in manifest["ready_made"]["made_with"]
    assert artifacts.describe_run(digit).startswith("the ready-made cnn shipped with digitlab")
    assert artifacts.read_manifest(reader)["reads"] == "number"


# ------------------------------------------------------------------ untrusted manifests

MANIFEST_DAMAGE = {
    "metrics empty": (lambda m: m.update(metrics={}), "metrics.test_accuracy"),
    "model null": (lambda m: m.update(model=None), "'model'"),
    "short label names": (lambda m: m.update(label_names=["0", "1"]), "label_names"),
    "huge input shape": (lambda m: m.update(input_shape=[1e9]), "input_shape"),
    "input shape text": (lambda m: m.update(input_shape="abc"), "input_shape"),
    "missing key": (lambda m: m.pop("dataset"), "'dataset'"),
    "escape in a label": (
        lambda m: m.update(label_names=["\x1b[31m0", *m["label_names"][1:]]),
        "control characters",
    ),
    "not an object": (lambda m: m.clear() or m.update(x=1), "'model'"),
}


@pytest.mark.parametrize("damage", list(MANIFEST_DAMAGE))
def test_a_malformed_manifest_is_named_and_hides_no_other_run(
    damage, saved_run, tmp_path, monkeypatch
):
    monkeypatch.setenv("DIGITLAB_RUNS", str(tmp_path))
    good = copy_run(saved_run, tmp_path, "20260101-000000-mlp")
    bad = copy_run(saved_run, tmp_path, "20260101-000001-mlp")
    manifest = json.loads((bad / "metrics.json").read_text())
    change, field = MANIFEST_DAMAGE[damage]
    change(manifest)
    (bad / "metrics.json").write_text(json.dumps(manifest))
    with pytest.raises(DigitlabError, match="metrics.json") as caught:
        artifacts.read_manifest(bad)
    assert field in str(caught.value)
    listing = CliRunner().invoke(cli, ["runs"])
    assert listing.exit_code == 0
    assert good.name in listing.stdout and bad.name not in listing.stdout
    assert f"skipped: {bad}" in listing.stderr and field in listing.stderr
    served = CliRunner().invoke(cli, ["predict", "--run", str(bad), "x.png"])
    assert served.exit_code == 1 and "Traceback" not in served.output


def test_deeply_nested_json_is_a_clear_error(saved_run, tmp_path):
    folder = copy_run(saved_run, tmp_path, "run")
    (folder / "metrics.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(DigitlabError, match="unreadable"):
        artifacts.read_manifest(folder)


# ------------------------------------------------------------------- untrusted NumPy models


def _rewrite_npz(folder: Path, change) -> None:
    with np.load(folder / "inference.npz") as stored:
        arrays = {key: stored[key] for key in stored.files}
    change(arrays)
    np.savez(folder / "inference.npz", **arrays)


def _spec_change(edit):
    def change(arrays):
        specs = json.loads(str(arrays["spec"]))
        edit(specs)
        arrays["spec"] = np.array(json.dumps(specs))

    return change


NPZ_DAMAGE = {
    "unknown kind": _spec_change(lambda specs: specs[1].update(kind="Teleport")),
    "kind not a string": _spec_change(lambda specs: specs[1].update(kind=[1, 2])),
    "weights count wrong": _spec_change(lambda specs: specs[1].update(weights=5)),
    "weights count text": _spec_change(lambda specs: specs[1].update(weights="2")),
    "spec not a list": _spec_change(lambda specs: specs.clear()),
    "activation unknown": _spec_change(lambda specs: specs[1].update(activation="evil")),
    "weights swapped": lambda arrays: arrays.update({"1/0": arrays["1/1"]}),
    "spec missing": lambda arrays: arrays.pop("spec"),
}


@pytest.mark.parametrize("damage", list(NPZ_DAMAGE))
def test_a_malformed_numpy_model_is_an_error_at_load(damage, saved_run, tmp_path):
    folder = copy_run(saved_run, tmp_path, "run")
    _rewrite_npz(folder, NPZ_DAMAGE[damage])
    with pytest.raises(DigitlabError, match="inference.npz: damaged or not a digitlab model"):
        Predictor.from_run(folder)


def test_a_truncated_numpy_model_is_an_error(saved_run, tmp_path):
    folder = copy_run(saved_run, tmp_path, "run")
    whole = (folder / "inference.npz").read_bytes()
    (folder / "inference.npz").write_bytes(whole[: len(whole) // 3])
    with pytest.raises(DigitlabError, match="damaged"):
        Predictor.from_run(folder)


def test_only_the_described_arrays_are_read(saved_run, tmp_path):
    """A 2 GiB array of zeros zips to a few MB; a reader that loads every array pays 2 GiB."""
    folder = copy_run(saved_run, tmp_path, "run")
    big = 2**31  # bytes, as the zip's header declares them
    header = np.lib.format.header_data_from_array_1_0(np.zeros(1, np.uint8))
    header["shape"] = (big,)
    with zipfile.ZipFile(folder / "inference.npz", "a", compression=zipfile.ZIP_DEFLATED) as z:
        with z.open("unused.npy", "w", force_zip64=True) as handle:
            np.lib.format.write_array_header_1_0(handle, header)
            chunk = bytes(2**24)
            for _ in range(big // len(chunk)):
                handle.write(chunk)
    assert (folder / "inference.npz").stat().st_size < 20 * 2**20
    predictor = Predictor.from_run(folder)  # reads spec and weights only: no 2 GiB allocation
    assert predictor.predict_digits(np.zeros((2, 28, 28), np.uint8)).shape == (2, 10)
    # a described array over the limit is refused from its size in the zip directory
    with zipfile.ZipFile(folder / "inference.npz") as z:
        sizes = {i.filename: i.file_size for i in z.infolist()}
    assert sizes["unused.npy"] > runtime.MAX_TOTAL_BYTES


def test_export_refuses_nothing_it_can_run_and_every_kind_is_in_the_table():
    assert set(runtime.LAYER_KINDS) >= {
        "Identity",
        "Dense",
        "Activation",
        "Reshape",
        "Conv2D",
        "BatchNormalization",
        "MaxPooling2D",
        "AveragePooling2D",
        "GlobalAveragePooling2D",
    }
    with pytest.raises(ValueError, match="unknown layer kind"):
        runtime.NumpyModel([{"kind": "Mystery", "weights": 0}], {})


def test_a_corrupt_source_note_in_the_data_cache_is_ignored(tmp_path, tiny_data):
    from conftest import pinned_spec, write_idx_folder

    raw = write_idx_folder(tmp_path / "given", tiny_data)
    spec = pinned_spec(raw)
    datasets.ensure(spec, from_path=tmp_path / "given", report=lambda line: None)
    (spec.cache_dir / "source.json").write_text('{"source": ')  # cut off mid-write
    again = datasets.ensure(spec, report=lambda line: None)
    assert again.source == "cache" and again.sha256 == spec.sha256


def test_leftovers_of_killed_writers_are_removed_at_start(tmp_path, monkeypatch):
    from digitlab import fileio

    monkeypatch.setenv("DIGITLAB_RUNS", str(tmp_path))
    dead = 2**22 + 12345  # above Linux's default pid_max: no such process
    stale_run = tmp_path / f".20261129-025254-mlp.{dead}.abc_12.tmp"
    stale_run.mkdir()
    (stale_run / "model.keras").write_bytes(b"x" * 1000)
    stale_file = tmp_path / f".metrics.{dead}.xyz.tmp.json"
    stale_file.write_text("{}")
    live = tmp_path / f".20261129-025254-cnn.{os.getpid()}.live.tmp"
    live.mkdir()
    kept_run = tmp_path / "20261129-025254-mlp"
    kept_run.mkdir()
    result = CliRunner().invoke(cli, ["runs"])
    assert result.exit_code == 0 and "removed 2 leftover(s)" in result.stderr
    assert not stale_run.exists() and not stale_file.exists()
    assert live.exists() and kept_run.exists()  # a live writer's work and real runs stay
    old = os.path.getmtime(live) - fileio.LEFTOVER_MAX_AGE_SECONDS - 10
    os.utime(live, (old, old))
    assert fileio.remove_leftovers(tmp_path) == [live]
    shutil.rmtree(kept_run)


def test_a_full_disk_names_the_file(tmp_path, monkeypatch):
    import errno

    from digitlab import fileio

    def full(descriptor):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fileio.os, "fsync", full)
    target = tmp_path / "metrics.json"
    with pytest.raises(fileio.WriteError, match=f"cannot write {target}: No space left"):
        fileio.atomic_write_text(target, "{}")
    assert list(tmp_path.iterdir()) == []  # neither the file nor a temporary one is left
