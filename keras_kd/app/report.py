"""`report.html` of `keras-kd demo`: the table and three figures in one file.

The figures are PNGs drawn by matplotlib's Agg canvas (no display, no global
pyplot state) and embedded as base64 data URIs, so the page is a single file
with no scripts and nothing fetched: it can be mailed or attached as it is.
"""

import base64
import html
import io
import itertools

import numpy as np

from keras_kd import _extras
from keras_kd._files import atomic_path
from keras_kd.calibration import BINS, reliability  # noqa: F401 - report.reliability, report.BINS

# matplotlib comes with the 'demo' extra.
_FEATURE = "The report of keras-kd demo (keras_kd.app.report)"
FigureCanvasAgg = _extras.require("matplotlib.backends.backend_agg", _FEATURE, "demo").FigureCanvasAgg
Figure = _extras.require("matplotlib.figure", _FEATURE, "demo").Figure

def per_class_agreement(student_predictions, teacher_predictions, labels, classes):
    """Share of samples of each true class on which student and teacher agree.

    Args:
        student_predictions: `(samples,)` the student's top-1 class ids.
        teacher_predictions: `(samples,)` the teacher's top-1 class ids.
        labels: `(samples,)` true class ids, which group the samples.
        classes: number of classes.

    Returns:
        A `(classes,)` array of agreements in [0, 1], NaN for a class with no
        sample.

    Example:

    ```python
    per_class_agreement(np.array([0, 1, 1]), np.array([0, 0, 1]), np.array([0, 0, 1]), 2)
    # array([0.5, 1. ])
    ```
    """
    labels = np.asarray(labels)
    same = (np.asarray(student_predictions) == np.asarray(teacher_predictions)).astype(np.float64)
    count = np.bincount(labels, minlength=classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.bincount(labels, same, minlength=classes) / count


def png(figure):
    """A matplotlib figure as PNG bytes.

    Args:
        figure: a `matplotlib.figure.Figure`.

    Returns:
        The PNG file's bytes.

    Example:

    ```python
    data = png(Figure())
    ```
    """
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def accuracy_figure(rows):
    """Test accuracy against size on disk and against latency, one marker per row.

    Args:
        rows: dicts with `model` (name), `accuracy` (in [0, 1]),
            `parameters`, `bytes` (the file's size) and `latency` (seconds
            per sample), as `demo.run` returns them.

    Returns:
        A `Figure` of two panels sharing the accuracy axis.

    Example:

    ```python
    accuracy_figure([{"model": "teacher", "accuracy": 0.99, "parameters": 20522, "bytes": 113152,
                      "latency": 0.0011}])
    ```
    """
    figure = Figure(figsize=(9.6, 5.2), layout="constrained")
    by_size, by_latency = figure.subplots(1, 2, sharey=True)
    # A legend, not text beside the points: the students share a size and
    # the int8 file an accuracy, so labels beside them would overlap.
    for row, marker in zip(rows, itertools.cycle("os^Dvp")):
        style = dict(s=60, marker=marker, zorder=3)
        by_size.scatter(row["bytes"] / 1024, 100 * row["accuracy"], **style,
                        label=f"{row['model']}: {row['parameters']:,} parameters, "
                              f"{100 * row['accuracy']:.1f}%")
        by_latency.scatter(1e6 * row["latency"], 100 * row["accuracy"], **style)
    for axes in (by_size, by_latency):
        axes.set_xscale("log")
        axes.margins(x=0.3, y=0.3)
        axes.grid(alpha=0.3)
    figure.legend(loc="outside lower center", ncol=2, fontsize=8)
    by_size.set_xlabel("size on disk (KiB, log scale)")
    by_size.set_ylabel("test accuracy (%)")
    by_size.set_title("Accuracy against size")
    by_latency.set_xlabel("latency per sample, batch 1 (µs, log scale)")
    by_latency.set_title("Accuracy against latency on this CPU")
    return figure


def reliability_figure(curves):
    """Reliability diagram: accuracy per confidence bin against the diagonal.

    Args:
        curves: `{name: reliability(...)}`, one curve per model; the legend
            gives each model's ECE.

    Returns:
        A `Figure`: the diagram above, the share of samples per bin below.

    Example:

    ```python
    reliability_figure({"teacher": reliability(probabilities, labels)})
    ```
    """
    bins = len(next(iter(curves.values()))["count"])
    figure = Figure(figsize=(6.4, 5.6))
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    top.plot([0, 1], [0, 1], color="gray", linestyle="--", label="perfect calibration")
    width = 1 / (len(curves) + 1)
    for i, (name, curve) in enumerate(curves.items()):
        edges, filled = curve["edges"], curve["count"] > 0
        top.plot(curve["confidence"][filled], curve["accuracy"][filled], marker="o",
                 label=f"{name} (ECE {100 * curve['ece']:.2f}%)")
        step = np.diff(edges)
        bottom.bar(edges[:-1] + step * width * (i + 0.5), curve["count"] / curve["count"].sum(),
                   width=step * width, align="edge", label=name)
    top.set_xlim(0, 1)
    top.set_ylim(0, 1.02)
    top.set_ylabel("accuracy in the bin")
    top.set_title(f"Reliability on the test split ({bins} equal-width bins)")
    top.legend(loc="lower right", fontsize=8)
    top.grid(alpha=0.3)
    bottom.set_xlabel("confidence (largest predicted probability)")
    bottom.set_ylabel("share of samples")
    bottom.grid(alpha=0.3)
    return figure


def agreement_figure(agreement):
    """Bar chart of student-teacher top-1 agreement per true class.

    Args:
        agreement: `(classes,)` agreements in [0, 1], as
            `per_class_agreement` returns them.

    Returns:
        A `Figure`.

    Example:

    ```python
    agreement_figure(np.array([0.98, 0.91, 1.0]))
    ```
    """
    agreement = np.asarray(agreement)
    figure = Figure(figsize=(6.4, 3.6))
    axes = figure.add_subplot()
    classes = np.arange(len(agreement))
    axes.bar(classes, 100 * agreement)
    for c, value in zip(classes, agreement):
        if not np.isnan(value):
            axes.annotate(f"{100 * value:.0f}", (c, 100 * value), xytext=(0, 2),
                          textcoords="offset points", ha="center", fontsize=8)
    axes.set_xticks(classes)
    axes.set_ylim(0, 108)
    axes.set_xlabel("true class")
    axes.set_ylabel("agreement with the teacher (%)")
    axes.set_title("Student's top-1 agreement with the teacher, per class")
    axes.grid(axis="y", alpha=0.3)
    return figure


def html_page(title, table, sections, notes=()):
    """One self-contained HTML page: a table, then captioned PNG figures.

    Args:
        title: the page's heading.
        table: `(header, lines)`: column titles and rows of cells (str).
        sections: `(heading, caption, png_bytes)` per figure, in order.
        notes: paragraphs under the table.

    Returns:
        The page as a string; figures are `data:image/png;base64,` images.

    Example:

    ```python
    html_page("Demo", (("model", "accuracy"), [("teacher", "99.1%")]), [])
    ```
    """
    header, lines = table
    e = html.escape
    head = "".join(f"<th>{e(cell)}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{e(cell)}</td>" for cell in line) + "</tr>\n"
                   for line in lines)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
        "table{border-collapse:collapse}th,td{padding:.2em .8em;border-bottom:1px solid #ccc}"
        "td+td,th+th{text-align:right}img{max-width:100%}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        f"<table>\n<tr>{head}</tr>\n{body}</table>",
    ]
    parts += [f"<p>{e(note)}</p>" for note in notes]
    for heading, caption, data in sections:
        image = base64.b64encode(data).decode("ascii")
        parts += [f"<h2>{e(heading)}</h2>", f"<p>{e(caption)}</p>",
                  f'<img src="data:image/png;base64,{image}" alt="{e(heading)}">']
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write(path, rows, table, labels, probabilities, student, notes=(), force=False):
    """Writes the demo's `report.html` (atomically; a previous one only with `force`).

    Args:
        path: the HTML file to write.
        rows: the demo's rows (see `accuracy_figure`).
        table: `(header, lines)` of the printed table.
        labels: `(samples,)` test labels.
        probabilities: `{name: (samples, classes) test probabilities}`, one
            reliability curve each; `"teacher"` is required.
        student: the name in `probabilities` of the student whose agreement
            with the teacher is drawn.
        notes: paragraphs under the table (verdicts, methods).
        force: replace an existing file at `path` (else `ValueError`).

    Returns:
        The ECE per name of `probabilities`.

    Example:

    ```python
    write("kd_output/report.html", rows, (header, lines), y_test,
          {"teacher": teacher_p, "student": student_p}, "student")
    ```
    """
    curves = {name: reliability(p, labels) for name, p in probabilities.items()}
    student_top1 = np.argmax(probabilities[student], axis=-1)
    teacher_top1 = np.argmax(probabilities["teacher"], axis=-1)
    agreement = per_class_agreement(student_top1, teacher_top1, labels,
                                    np.shape(probabilities["teacher"])[-1])
    overall = float(np.mean(student_top1 == teacher_top1))
    ece = {name: curve["ece"] for name, curve in curves.items()}
    sections = [
        ("Accuracy against size and latency", "Test accuracy of each model against its file's size "
         "on disk and its latency per sample at batch 1 on this CPU; the int8 .tflite file holds "
         "keras_kd's student.", png(accuracy_figure(rows))),
        ("Reliability", f"Accuracy per confidence bin on the test split ({BINS} equal-width bins) "
         f"against the diagonal of perfect calibration. Expected calibration error: "
         + ", ".join(f"{name} {100 * value:.2f}%" for name, value in ece.items()) + ".",
         png(reliability_figure(curves))),
        ("Agreement with the teacher", f"Share of test samples of each true class on which the "
         f"top-1 prediction of {student} is the teacher's; {100 * overall:.1f}% overall.",
         png(agreement_figure(agreement))),
    ]
    page = html_page("keras-kd demo", table, sections, notes)
    with atomic_path(path, force) as partial:
        with open(partial, "w", encoding="utf-8") as file:
            file.write(page)
    return ece
