"""The HTML report, `digitlab runs` and `digitlab compare`; the report rendered in Chromium."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from digitlab.cli import cli

SECTIONS = [
    "configuration",
    "data",
    "model",
    "training",
    "test",
    "confusion",
    "per-class",
    "predictions",
    "mistakes",
    "calibration",
]


@pytest.fixture
def tiny_run(tiny_folder, tmp_path) -> Path:
    result = CliRunner().invoke(
        cli,
        ["train", "--dataset", str(tiny_folder), "--epochs", "3", "--validation-split", "0.2"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert "report: " in result.output
    return (tmp_path / "runs" / "latest").resolve()


def test_train_writes_a_report_with_every_section(tiny_run):
    page = (tiny_run / "report.html").read_text()
    for section in SECTIONS:
        assert f"id='{section}'" in page
    assert "http://" not in page and "https://" not in page  # nothing to fetch: works offline
    # the mistakes grid and the maps of why, if any mistakes
    images = 4 if "No test digit is wrong" in page else 6
    assert len(re.findall(r'src="data:image/png;base64,', page)) == images
    if images == 6:
        assert "Why it said that" in page
    assert "Expected calibration error" in page and "Total parameters" in page


def test_report_numbers_equal_metrics_json(tiny_run):
    result = CliRunner().invoke(cli, ["report", "--run", str(tiny_run)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(tiny_run / "report.html")
    page = (tiny_run / "report.html").read_text()
    manifest = json.loads((tiny_run / "metrics.json").read_text())
    metrics = manifest["metrics"]
    test_row = re.search(r"<td class=\"text\">test</td><td>([\d.]+)</td><td>([\d.]+)</td>", page)
    assert float(test_row.group(1)) == pytest.approx(metrics["test_accuracy"], abs=5e-5)
    assert float(test_row.group(2)) == pytest.approx(metrics["test_loss"], abs=5e-5)
    assert f"{manifest['data_sha256']['train-images-idx3-ubyte']}" in page
    # The confusion matrix table's diagonal gives back the test accuracy in metrics.json.
    table = page[page.index("true \\ predicted") :]
    rows = re.findall(r"<tr><td class=\"text\">\d</td>((?:<td>\d+</td>){10})</tr>", table)[:10]
    counts = [[int(v) for v in re.findall(r"\d+", row)] for row in rows]
    right = sum(counts[k][k] for k in range(10))
    total = sum(map(sum, counts))
    assert total == 100
    assert right / total == pytest.approx(metrics["test_accuracy"], abs=1e-6)
    for epoch, loss in enumerate(manifest["history"]["loss"], start=1):
        assert f"<td>{epoch}</td>" in page and f"{loss:.4f}" in page


def test_runs_lists_and_compare_puts_side_by_side(tiny_folder, tiny_run, tmp_path):
    second = CliRunner().invoke(
        cli, ["train", "--dataset", str(tiny_folder), "--epochs", "1", "--seed", "3"]
    )
    assert second.exit_code == 0
    (tmp_path / "runs" / "not-a-run").mkdir()
    result = CliRunner().invoke(cli, ["runs"])
    listing = result.stdout.strip().splitlines()
    assert listing[0].split()[:4] == ["run", "model", "dataset", "epochs"]
    assert len(listing) == 3 and listing[-1].endswith("<- latest")
    assert "skipped: " in result.stderr and "not-a-run is not a complete run" in result.stderr
    latest = (tmp_path / "runs" / "latest").resolve()
    compared = CliRunner().invoke(cli, ["compare", str(tiny_run), str(latest)])
    assert compared.exit_code == 0
    seeds = next(line for line in compared.output.splitlines() if line.startswith("seed"))
    assert seeds.split()[1:] == ["0", "3"]
    alone = CliRunner().invoke(cli, ["compare", str(tiny_run)])
    assert alone.exit_code == 1 and "at least two" in alone.output


def test_runs_with_no_runs_says_so():
    result = CliRunner().invoke(cli, ["runs"])
    assert result.exit_code == 0 and "no runs in" in result.output


@pytest.mark.slow
def test_the_report_renders_in_chromium_with_every_image_loaded(tiny_run, tmp_path, browser):
    page = browser.new_page()
    page.goto((tiny_run / "report.html").as_uri())
    images = page.eval_on_selector_all(
        "img", "images => images.map(i => [i.complete, i.naturalWidth, i.alt])"
    )
    assert len(images) == page.locator("section img").count() >= 4
    assert all(complete and width > 100 for complete, width, _ in images), images
    assert page.title().startswith("digitlab report")
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    shutil.copy(tmp_path / "report.png", tiny_run / "report-screenshot.png")
    page.close()
