"""report.html of the demo: calibration and agreement by hand, and the quick demo's file."""

import base64
import html
import html.parser
import io
import re

import keras
import numpy as np
import PIL.Image
import pytest

from keras_kd.app import datasets, demo, report


def test_reliability_bins_and_ece_by_hand():
    probabilities = np.array([
        [0.95, 0.03, 0.02],  # confidence 0.95, bin 14 (14/15, 1], right
        [0.02, 0.95, 0.03],  # 0.95, bin 14, wrong
        [0.50, 0.30, 0.20],  # 0.50, bin 7 (7/15, 8/15], right
        [0.29, 0.42, 0.29],  # 0.42, bin 6 (6/15, 7/15], wrong
        [0.34, 0.33, 0.33],  # 0.34, bin 5 (5/15, 6/15], right
    ])
    curve = report.reliability(probabilities, np.array([0, 0, 0, 2, 0]))
    assert curve["count"].tolist() == [0] * 5 + [1, 1, 1] + [0] * 6 + [2]
    filled = curve["count"] > 0
    np.testing.assert_allclose(curve["accuracy"][filled], [1.0, 0.0, 1.0, 0.5])
    np.testing.assert_allclose(curve["confidence"][filled], [0.34, 0.42, 0.50, 0.95])
    assert np.isnan(curve["accuracy"][~filled]).all()
    # (|1 - 0.34| + |0 - 0.42| + |1 - 0.5| + 2 |0.5 - 0.95|) / 5
    assert abs(curve["ece"] - 2.48 / 5) < 1e-12
    np.testing.assert_allclose(curve["edges"], np.arange(16) / 15)


def test_reliability_of_a_calibrated_model_is_zero():
    # Confidence 0.75 in every sample, right on 3 of 4.
    probabilities = np.array([[0.75, 0.25]] * 4)
    curve = report.reliability(probabilities, np.array([0, 0, 0, 1]))
    assert curve["ece"] == 0.0


def test_per_class_agreement_groups_by_true_class():
    student = np.array([0, 1, 2, 2, 1])
    teacher = np.array([0, 0, 2, 1, 1])
    labels = np.array([0, 0, 2, 2, 2])
    agreement = report.per_class_agreement(student, teacher, labels, classes=4)
    np.testing.assert_allclose(agreement, [0.5, np.nan, 2 / 3, np.nan])


class _Page(html.parser.HTMLParser):
    """The rows of the page's table (cells as text) and its image sources."""

    def __init__(self):
        super().__init__()
        self.rows, self.images, self.cell = [], [], None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self.cell = ""
        elif tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.rows[-1].append(self.cell)
            self.cell = None


def printed_table(output):
    """The demo's printed table as rows of cells: header, then one row per model."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("model  "))
    rows = []
    for line in [lines[start]] + lines[start + 2:]:
        if not line.strip() or line.startswith("Quick run"):
            break
        rows.append(re.split(r"\s{2,}", line.strip()))
    return rows


@pytest.mark.slow
def test_quick_demo_writes_one_self_contained_report(tmp_path, capsys):
    output = tmp_path / "out"
    rows, summary = demo.run(output=str(output), quick=True, epochs=1)
    table = printed_table(capsys.readouterr().out)
    assert len(table) == 7 == len(rows) + 1 and table[0][0] == "model"

    text = (output / "report.html").read_text(encoding="utf-8")
    page = _Page()
    page.feed(text)
    assert page.rows == table  # every printed number, in the same cells
    assert text.count('<img src="data:image/png;base64,') == 3 == len(page.images)
    for source in page.images:
        image = PIL.Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1], validate=True)))
        image.load()
        assert image.format == "PNG" and min(image.size) > 100
    # Nothing outside the file: no scripts, no links, every source embedded.
    assert "<script" not in text and "href=" not in text
    assert len(re.findall(r'src="', text)) == len(re.findall(r'src="data:image/png;base64,', text))
    assert "Quick run" in text  # the smoke-test warning travels with the numbers
    for line in [*summary["verdicts"], summary["calibration"]]:  # and the verdicts
        assert f"<p>{html.escape(line)}</p>" in text

    # The reliability section reports the saved teacher's and calibrated student's ECE.
    x_test, y_test = datasets.teacher_knows_more(0, 2500, 2500)["test"]
    for name, file in (("keras_kd, calibrated", "student.keras"), ("teacher", "teacher.keras")):
        model = keras.models.load_model(output / file)
        ece = report.reliability(demo.probabilities(model, x_test), y_test)["ece"]
        assert f"{name} {100 * ece:.2f}%" in text
    assert "keras_kd, before calibration" in text
