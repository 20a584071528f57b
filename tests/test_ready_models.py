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
