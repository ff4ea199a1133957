"""The keras-kd command: help, and the demo's quick run end to end."""

import subprocess

import keras
import numpy as np

from keras_kd import cli, datasets


def test_help_lists_the_subcommands_and_defaults():
    result = subprocess.run(["keras-kd", "demo", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "--quick" in result.stdout and "(default: kd_output)" in result.stdout


def test_quick_demo_prints_the_table_and_writes_its_files(tmp_path, capsys):
    assert cli.main(["demo", "--quick", "--output", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    for row in ("teacher", "student, labels alone", "student, distilled"):
        assert row in table
    for column in ("test accuracy", "parameters", "size on disk", "training time"):
        assert column in table
    for run in ("teacher", "student_alone", "distilled"):
        assert list((tmp_path / "logs" / run / "train").glob("events.out.tfevents.*"))
    student = keras.models.load_model(tmp_path / "student.keras")
    (_, _), (x_test, y_test) = datasets.mnist1d()
    accuracy = float((student.predict(x_test, verbose=0).argmax(-1) == y_test).mean())
    assert f"{100 * accuracy:.1f}%" in table  # the table reports the saved file
    assert np.isfinite(student.predict(x_test[:4], verbose=0)).all()
