"""Predictor, the NumPy runtime against Keras, and `digitlab predict` on real MNIST digits."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from digitlab import artifacts, models, preprocess
from digitlab.cli import cli
from digitlab.predict import Predictor
from digitlab.schemas import DigitAnswer, NumberAnswer


def on_paper(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """An MNIST digit as dark ink on a larger light canvas, at a random size and place."""
    canvas_side = int(rng.integers(64, 200))
    side = int(rng.integers(28, canvas_side - 4))
    canvas = np.full((canvas_side, canvas_side), int(rng.integers(200, 250)), np.uint8)
    ink = np.array(Image.fromarray(digit).resize((side, side), Image.Resampling.BICUBIC))
    top, left = (int(rng.integers(0, canvas_side - side + 1)) for _ in range(2))
    region = canvas[top : top + side, left : left + side]
    canvas[top : top + side, left : left + side] = np.minimum(region, 255 - ink)
    return Image.fromarray(canvas)


@pytest.fixture(scope="module")
def test_digits(mnist_arrays):
    _, (x_test, y_test) = mnist_arrays
    return x_test, y_test


def test_numpy_runtime_matches_keras(mnist_run, test_digits):
    x_test, _ = test_digits
    fast = Predictor.from_run(mnist_run)
    reference = Predictor.from_run(mnist_run, use_keras=True)
    np.testing.assert_allclose(
        fast.predict_digits(x_test[:300]), reference.predict_digits(x_test[:300]), atol=1e-5
    )


def test_mnist_digits_round_trip_through_png_on_a_larger_canvas(mnist_run, test_digits, tmp_path):
    x_test, y_test = test_digits
    predictor = Predictor.from_run(mnist_run)
    rng = np.random.default_rng(0)
    paths = []
    for index in range(300):
        path = tmp_path / f"{index}.png"
        on_paper(x_test[index], rng).save(path)
        paths.append(path)
    direct = predictor.predict_digits(x_test[:300]).argmax(axis=1)
    through_files = [p.label for p in predictor.predict(paths)]
    agreement = np.mean(direct == np.array(through_files))
    assert agreement >= 0.97
    assert np.mean(np.array(through_files) == y_test[:300]) >= 0.95


def test_predict_command_plain_json_errors_and_inputs(mnist_run, test_digits, tmp_path):
    x_test, y_test = test_digits
    folder = tmp_path / "mine" / "nested"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for index in range(3):
        on_paper(x_test[index], rng).save(folder / f"digit{index}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    Image.new("L", (60, 60), 255).save(folder / "blank.png")
    seen = tmp_path / "seen.png"

    plain = CliRunner().invoke(
        cli,
        [
            "predict",
            "--run",
            str(mnist_run),
            "--top",
            "2",
            "--show-input",
            str(seen),
            str(tmp_path / "mine"),
        ],
    )
    assert plain.exit_code == 1  # two images failed; the others were still answered
    lines = plain.stdout.strip().splitlines()
    assert len(lines) == 3 and lines[0].startswith(str(folder / "digit0.png") + ": 7 (")
    assert "broken.png: error: truncated or corrupt" in plain.stderr
    assert "blank.png: error: no digit found" in plain.stderr
    assert Image.open(seen).size == (3 * 224 + 2 * 4, 224)

    as_json = CliRunner().invoke(cli, ["predict", "--run", str(mnist_run), "--json", str(folder)])
    records = [json.loads(line) for line in as_json.stdout.strip().splitlines()]
    good = [r for r in records if "error" not in r]
    assert [set(r) for r in good] == [
        {"path", "label", "label_name", "confidence", "probabilities", "is_digit", "digit_score"}
    ] * 3
    for record in good:
        DigitAnswer.model_validate({key: v for key, v in record.items() if key != "path"})
    assert [r["label"] for r in good] == y_test[:3].tolist()
    assert all(len(r["probabilities"]) == 10 for r in good)
    assert sorted(set(r) for r in records if "error" in r) == [{"path", "error"}] * 2


def test_predict_reads_standard_input(mnist_run, test_digits, tmp_path):
    x_test, _ = test_digits
    on_paper(x_test[1], np.random.default_rng(2)).save(tmp_path / "two.png")
    result = CliRunner().invoke(
        cli, ["predict", "--run", str(mnist_run), "-"], input=(tmp_path / "two.png").read_bytes()
    )
    assert result.exit_code == 0
    assert result.stdout.startswith("-: 2 (")


def test_predict_a_written_number(mnist_run, test_digits, tmp_path):
    x_test, y_test = test_digits
    wanted = [1, 2, 0, 7]  # the test set indices of these labels, from its first digits
    indices = [int(np.flatnonzero(y_test == digit)[0]) for digit in wanted]
    strip = np.hstack([np.pad(x_test[i], ((4, 4), (6, 6))) for i in indices])
    Image.fromarray(255 - strip).resize((strip.shape[1] * 4, strip.shape[0] * 4)).save(
        tmp_path / "number.png"
    )
    result = CliRunner().invoke(
        cli,
        ["predict", "--run", str(mnist_run), "--number", "--json", str(tmp_path / "number.png")],
    )
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["text"] == "1207"
    assert len(record["digits"]) == 4
    # One schema for a number: the CLI's (here) and the API's (test_web) validate against it.
    answer = NumberAnswer.model_validate({k: v for k, v in record.items() if k != "path"})
    product = np.prod([digit.confidence for digit in answer.digits])
    assert answer.confidence == pytest.approx(product)
    plain = CliRunner().invoke(
        cli, ["predict", "--run", str(mnist_run), "--number", str(tmp_path / "number.png")]
    )
    assert plain.stdout.startswith(f"{tmp_path / 'number.png'}: 1207 (")


def test_predict_api_takes_paths_pil_images_and_arrays(mnist_run, test_digits, tmp_path):
    x_test, y_test = test_digits
    image = on_paper(x_test[0], np.random.default_rng(3))
    image.save(tmp_path / "seven.png")
    predictor = Predictor.from_run(mnist_run)
    results = predictor.predict([tmp_path / "seven.png", image, np.asarray(image), x_test[0]])
    assert [r.label for r in results] == [7, 7, 7, 7]
    assert results[0].input.shape == (28, 28)
    with pytest.raises(preprocess.EmptyImageError):
        predictor.predict([np.zeros((40, 40))])


def test_predict_without_a_run_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(artifacts, "READY_DIR", tmp_path / "none")  # installed without them
    result = CliRunner().invoke(cli, ["predict", "x.png"])
    assert result.exit_code == 1
    assert "no trained model" in result.output and "Traceback" not in result.output


def test_predict_with_no_runs_answers_with_the_ready_model(test_digits, tmp_path):
    x_test, y_test = test_digits
    Image.fromarray(255 - x_test[0]).resize((112, 112)).save(tmp_path / "digit.png")
    year = [x_test[np.flatnonzero(y_test == digit)[0]] for digit in (2, 0, 2, 6)]
    strip = np.pad(np.hstack([np.pad(d, ((0, 0), (4, 4))) for d in year]), 10)
    Image.fromarray(255 - strip).resize((strip.shape[1] * 3, strip.shape[0] * 3)).save(
        tmp_path / "year.png"
    )
    result = CliRunner().invoke(cli, ["predict", "--json", str(tmp_path / "digit.png")])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["label"] == y_test[0]
    assert "answering with the ready-made cnn shipped with digitlab (99." in result.stderr
    result = CliRunner().invoke(cli, ["predict", "--number", str(tmp_path / "year.png")])
    assert result.exit_code == 0, result.output
    assert "with the ready-made reader shipped with digitlab" in result.stderr
    assert (
        result.stdout.startswith(f"{tmp_path / 'year.png'}: 2026 (")
        and "number reader" in result.stdout
    )


def test_the_explanation_is_not_noise(mnist_run, test_digits):
    """Blanking the 10% of ink the map ranks highest costs the answer far more confidence than
    blanking a random 10% of the ink (averaged over 60 real test digits)."""
    x_test, _ = test_digits
    predictor = Predictor.from_run(mnist_run)
    rng = np.random.default_rng(0)
    top_drops, random_drops = [], []
    for digit in x_test[:60]:
        [base] = predictor.predict_digits(digit[None])
        label = int(np.argmax(base))
        heat = predictor.explain(digit)
        assert heat.shape == (28, 28) and heat.min() >= 0 and not heat[digit == 0].any()
        ink = np.flatnonzero(digit.ravel() > 0)
        count = max(1, len(ink) // 10)
        ranked = ink[np.argsort(-heat.ravel()[ink])][:count]
        chosen = rng.choice(ink, count, replace=False)
        for pixels, drops in ((ranked, top_drops), (chosen, random_drops)):
            blanked = digit.copy().ravel()
            blanked[pixels] = 0
            [after] = predictor.predict_digits(blanked.reshape(1, 28, 28))
            drops.append(base[label] - after[label])
    assert np.mean(top_drops) > 3 * np.mean(random_drops)


def test_predict_explain_writes_a_sheet(mnist_run, test_digits, tmp_path):
    x_test, _ = test_digits
    for index in range(3):
        on_paper(x_test[index], np.random.default_rng(index)).save(tmp_path / f"{index}.png")
    sheet = tmp_path / "why.png"
    result = CliRunner().invoke(
        cli, ["predict", "--run", str(mnist_run), "--explain", str(sheet), str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert "explanations saved to" in result.stderr
    width, height = Image.open(sheet).size
    assert height > width  # one row per digit: input, then the map


def rejecting_predictor(not_a_digit: float) -> Predictor:
    """A stand-in digit model with a "not a digit" output: it always answers 7 with the rest
    of its probability, and ``not_a_digit`` on the 11th output; threshold 0.5."""

    def forward(inputs: np.ndarray) -> np.ndarray:
        output = np.full((len(inputs), 11), (1 - not_a_digit) * 0.02)
        output[:, 7] = (1 - not_a_digit) * 0.82
        output[:, 10] = not_a_digit
        return output

    manifest = {"model": "stand-in", "rejection": {"score": "1 - P(not a digit)", "threshold": 0.5}}
    return Predictor(forward, (28, 28, 1), manifest=manifest)


@pytest.mark.parametrize("not_a_digit, is_digit", [(0.9, False), (0.1, True)])
def test_every_digit_answer_says_whether_it_looks_like_a_digit(not_a_digit, is_digit, test_digits):
    x_test, _ = test_digits
    [answer] = rejecting_predictor(not_a_digit).predict([x_test[0]])
    record = answer.to_dict()
    DigitAnswer.model_validate(record)
    assert record["is_digit"] is is_digit
    assert record["label"] == 7  # the likeliest digit is still there for those who want it
    assert sum(record["probabilities"]) == pytest.approx(1)  # over the 10 digits
    assert record["digit_score"] == pytest.approx(1 - not_a_digit)


def test_the_cli_prints_not_a_digit(test_digits, tmp_path, monkeypatch):
    x_test, _ = test_digits
    Image.fromarray(255 - x_test[0]).save(tmp_path / "scribble.png")
    monkeypatch.setattr(
        Predictor, "from_run", classmethod(lambda cls, *a, **k: rejecting_predictor(0.9))
    )
    result = CliRunner().invoke(cli, ["predict", str(tmp_path / "scribble.png")])
    assert result.exit_code == 0, result.output
    assert (
        result.stdout.strip() == f"{tmp_path / 'scribble.png'}: not a digit (most like 7 (82.0%))"
    )
    record = json.loads(
        CliRunner().invoke(cli, ["predict", "--json", str(tmp_path / "scribble.png")]).stdout
    )
    assert record["is_digit"] is False and record["label"] == 7


def test_a_run_without_a_rule_answers_without_is_digit(mnist_run, test_digits):
    """Runs trained before the rule existed have none: their answers carry no is_digit."""
    x_test, _ = test_digits
    predictor = Predictor.from_run(mnist_run)
    predictor.manifest = {k: v for k, v in predictor.manifest.items() if k != "rejection"}
    [answer] = predictor.predict([x_test[0]])
    assert "is_digit" not in answer.to_dict()


def test_shifted_moves_images_and_fills_with_zero():
    image = np.arange(1, 10, dtype=np.uint8).reshape(1, 3, 3)
    assert models.shifted(image, 1, 0)[0].tolist() == [[0, 0, 0], [1, 2, 3], [4, 5, 6]]
    assert models.shifted(image, 0, -1)[0].tolist() == [[2, 3, 0], [5, 6, 0], [8, 9, 0]]
    assert np.array_equal(models.shifted(image, 0, 0), image)


def test_the_digit_score_is_averaged_over_the_shifts_its_rule_was_calibrated_with():
    """A stand-in whose "not a digit" output is the ink at the centre pixel: a lone dot one
    pixel right of the centre scores 1 as given, 0 moved a pixel left: 4/5 over the five views
    of a rule calibrated so, 1 under a rule from before (no shifts)."""

    passes = []

    def forward(inputs: np.ndarray) -> np.ndarray:
        passes.append(len(inputs))
        not_a_digit = inputs[:, 14, 14, 0]
        output = np.repeat(((1 - not_a_digit) / 10)[:, None], 11, axis=1)
        output[:, 10] = not_a_digit
        return output

    rule = {"score": "1 - P(not a digit)", "threshold": 0.9,
            "averaged_over_shifts": [list(shift) for shift in models.SCORE_SHIFTS]}  # fmt: skip
    dot = np.zeros((1, 28, 28), np.uint8)
    dot[0, 14, 15] = 255
    averaged = Predictor(forward, (28, 28, 1), manifest={"rejection": rule})
    probabilities, scores = averaged.scored_digits(dot)
    assert scores == pytest.approx([0.8])
    assert len(passes) == len(models.SCORE_SHIFTS)  # the digit as given read once
    assert averaged.result_for(dot[0], probabilities[0], scores[0]).is_digit is False
    assert averaged.predict_digits(dot) == pytest.approx(probabilities)  # one pass: as given
    earlier = Predictor(forward, (28, 28, 1), manifest={"rejection": {**rule}})
    del earlier.manifest["rejection"]["averaged_over_shifts"]
    probabilities, scores = earlier.scored_digits(dot)
    assert scores == pytest.approx([1.0])
    assert earlier.result_for(dot[0], probabilities[0], scores[0]).is_digit is True


def test_a_thin_line_is_read_thickened_and_as_written():
    """A digit model trained on other writers' pens reads a thin line's digit thickened and as
    written (an outline's loops stay open), the two averaged; the tutorial's MLP, which never
    saw a thin pen, reads it thickened only. Here a stand-in model reads heavy ink as an 8 and
    light ink as a 0."""
    from test_preprocess import outlined_ring

    prepared = preprocess.prepare_digit(outlined_ring())
    assert prepared.as_written is not None
    heavy = (prepared.image.mean() + prepared.as_written.mean()) / 2 / 255

    def forward(inputs: np.ndarray) -> np.ndarray:
        output = np.zeros((len(inputs), 10))
        is_heavy = inputs.reshape(len(inputs), -1).mean(axis=1) > heavy
        output[is_heavy, 8] = 1.0
        output[~is_heavy, 0] = 1.0
        return output

    pens = {"config": {"handwriting_share": 0.4}}
    trained_on_pens = Predictor(forward, (28, 28, 1), manifest=pens)
    [both] = trained_on_pens.predict([outlined_ring()])
    assert both.probabilities[0] == pytest.approx(0.5) == both.probabilities[8]
    assert np.array_equal(both.input, prepared.image)  # the input shown: the digit thickened

    tutorial = Predictor(forward, (28, 28, 1), manifest={"config": {"handwriting_share": 0.0}})
    [thickened_only] = tutorial.predict([outlined_ring()])
    assert thickened_only.label == 8 and thickened_only.confidence == 1.0

    [many] = [answer for _, answer in trained_on_pens.predict_many([("ring", outlined_ring())])]
    assert many.probabilities == both.probabilities  # predict_many reads it the same way
