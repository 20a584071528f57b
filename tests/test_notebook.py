"""The tutorial notebook runs from top to bottom (short trainings), so it cannot rot."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import use_real_mnist_cache

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "tutorial.ipynb"


@pytest.mark.slow
def test_tutorial_notebook_runs(monkeypatch, tmp_path, mnist_files):
    use_real_mnist_cache(monkeypatch)
    monkeypatch.setenv("DIGITLAB_NOTEBOOK_EPOCHS", "2")
    monkeypatch.setenv("DIGITLAB_NOTEBOOK_CNN_EPOCHS", "1")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    ).execute()  # raises CellExecutionError, with the cell and its traceback, if a cell fails

    printed = "".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )
    assert "train: (60000, 28, 28) uint8" in printed
    assert "first 20 test labels: 7 2 1 0 4 1 4 9 5 9 0 6 9 0 1 5 9 7 3 4" in printed
    # a progress line per epoch: steps, time, accuracy, loss
    assert "Epoch 2/2" in printed
    assert len(re.findall(r"469/469 - \d+s - .*accuracy: 0\.9\d+ - loss: ", printed)) == 2
    assert re.search(r"test accuracy  0\.9\d+\ntrain accuracy 0\.9\d+\ngap", printed)
    assert "read: 7" in printed  # the pen-drawn 7 on grey paper
    images = [
        output for cell in notebook.cells if cell.cell_type == "code"
        for output in cell.outputs if "image/png" in output.get("data", {})
    ]  # fmt: skip
    assert len(images) >= 5  # the digits, the predictions, the report's two plots, the map
    assert (tmp_path / "my_digit.jpg").is_file()
    assert len(list((tmp_path / "runs").glob("*-cnn"))) == 1
