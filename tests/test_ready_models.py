"""scripts/ready_models.py: what `make ready-models` runs after training the models again."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "ready_models.py"


@pytest.fixture
def ready_models():
    spec = importlib.util.spec_from_file_location("ready_models", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rebuilt_like_shipped(module, runs: Path) -> Path:
    """A runs folder as `make ready-models` leaves it, holding copies of the shipped models."""
    for kind, link in module.KINDS.items():
        shutil.copytree(module.SHIPPED / kind, runs / f"20261129-000000-{kind}")
        (runs / link).symlink_to(f"20261129-000000-{kind}")
    return runs


def test_the_check_passes_when_the_rebuilt_models_match(ready_models, tmp_path, capsys):
    assert ready_models.check(rebuilt_like_shipped(ready_models, tmp_path))
    printed = capsys.readouterr().out
    assert "cnn: rebuilt 0.99" in printed and "same data and settings" in printed


@pytest.mark.parametrize("members", [1, 2])
def test_a_setting_added_since_the_shipped_model_reads_as_its_default(
    ready_models, tmp_path, capsys, members
):
    """The shipped CNN was made before ``members`` existed; rebuilt now, its manifest has it."""
    runs = rebuilt_like_shipped(ready_models, tmp_path)
    path = runs / "latest" / "metrics.json"
    manifest = json.loads(path.read_text())
    assert "members" not in manifest["config"]
    manifest["config"]["members"] = members
    path.write_text(json.dumps(manifest))
    assert ready_models.check(runs) == (members == 1)
    assert ("different config" in capsys.readouterr().out) == (members != 1)


@pytest.mark.parametrize(
    "change, reported",
    [
        (lambda m: m["metrics"].update(test_accuracy=m["metrics"]["test_accuracy"] - 0.01),
         "OUTSIDE"),
        (lambda m: m["config"].update(epochs=3), "different config"),
        (lambda m: m["data_sha256"].update({"train-images-idx3-ubyte": "0" * 64}),
         "different data_sha256"),
    ],
)  # fmt: skip
def test_the_check_fails_when_they_differ(ready_models, tmp_path, capsys, change, reported):
    runs = rebuilt_like_shipped(ready_models, tmp_path)
    path = runs / "latest" / "metrics.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))
    assert not ready_models.check(runs)
    assert reported in capsys.readouterr().out


def test_the_installed_command_names_the_options_beyond_the_defaults(ready_models):
    from digitlab import models

    config = models.get("reader").config(seed=0).to_dict()
    assert ready_models._flags("reader", {"seed": 0, "config": config}) == ""
    config["numbers"] = 120_000
    assert ready_models._flags("reader", {"seed": 0, "config": config}) == " --numbers 120000"
    config["members"] = 3
    flags = ready_models._flags("reader", {"seed": 0, "config": config})
    assert flags == " --numbers 120000 --members 3"
    # a reader trained further: the option is --from, and the run is named, not its path here
    config.update(start_from="/home/me/build/ready-runs/20261207-201500-reader", epochs=3)
    flags = ready_models._flags("reader", {"seed": 3, "config": config})
    assert flags == " --epochs 3 --numbers 120000 --members 3 --from 20261207-201500-reader"


@pytest.mark.parametrize(
    ("rebuilt_from", "same"), [("/elsewhere/20261207-1-reader", True), ("", False)]
)
def test_a_reader_trained_further_matches_one_started_from_another_folder(
    ready_models, tmp_path, capsys, rebuilt_from, same
):
    """The shipped reader and its rebuild each started from a reader in a folder of their own
    machine: that both did is compared, not where."""
    runs = rebuilt_like_shipped(ready_models, tmp_path)
    for path, start in ((runs / "latest-reader" / "metrics.json", rebuilt_from),
                        (ready_models.SHIPPED / "reader" / "metrics.json", None)):  # fmt: skip
        manifest = json.loads(path.read_text())
        if start is None:
            shipped_from = manifest["config"].get("start_from", "")
            assert shipped_from, "the shipped reader is trained further"
            continue
        manifest["config"]["start_from"] = start
        path.write_text(json.dumps(manifest))
    assert ready_models.check(runs) == same
    assert ("different config" in capsys.readouterr().out) != same


@pytest.mark.parametrize(
    "argv, said",
    [
        (["install", "RUNS", "cnnn"], "unknown model kind cnnn: choose from cnn, reader"),
        (["install", "RUNS", "reader", "Reader"], "unknown model kind Reader"),
        (["instal", "RUNS"], "usage: ready_models.py"),
        (["check"], "usage: ready_models.py"),
        (["install", "NOWHERE", "cnn"], "holds no latest run"),
    ],
)
def test_bad_arguments_install_nothing_and_say_why(ready_models, tmp_path, argv, said):
    runs = rebuilt_like_shipped(ready_models, tmp_path / "runs")
    argv = [str(runs) if a == "RUNS" else str(tmp_path / a) if a == "NOWHERE" else a for a in argv]
    installed = []
    ready_models.install = lambda runs, kinds: installed.append(kinds)
    with pytest.raises(SystemExit) as stopped:
        ready_models.main(argv)
    assert said in str(stopped.value) and "\n" not in str(stopped.value)
    assert installed == []


def test_good_arguments_install_the_kinds_named(ready_models, tmp_path):
    runs = rebuilt_like_shipped(ready_models, tmp_path / "runs")
    installed = []
    ready_models.install = lambda runs, kinds: installed.append(kinds)
    ready_models.main(["install", str(runs), "reader"])
    ready_models.main(["install", str(runs)])
    assert installed == [["reader"], ["cnn", "reader"]]


def test_install_copies_one_kind_and_records_how_it_was_made(ready_models, tmp_path):
    runs = rebuilt_like_shipped(ready_models, tmp_path / "runs")
    ready_models.SHIPPED = tmp_path / "ready"
    ready_models.main(["install", str(runs), "reader"])
    assert sorted(p.name for p in (tmp_path / "ready").iterdir()) == ["reader"]
    installed = tmp_path / "ready" / "reader"
    assert sorted(p.name for p in installed.iterdir()) == [
        "inference.npz", "metrics.json", "model.keras"
    ]  # fmt: skip
    made = json.loads((installed / "metrics.json").read_text())["ready_made"]
    assert made["run"] == "20261129-000000-reader"
    # the shipped reader: three readers (seeds 0-2) trained further (seeds 3-5)
    assert made["made_with"].startswith("digitlab train --model reader --seed 3")
    assert " --members 3 --from " in made["made_with"]
