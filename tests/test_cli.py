"""The keras-kd command: demo, distill and export end to end, and its errors."""

import pathlib
import subprocess

import keras
import numpy as np
import pytest
import tensorflow_datasets as tfds

from keras_kd import cli, datasets, demo

CONFIGS = sorted((pathlib.Path(__file__).resolve().parent.parent / "examples" / "configs").glob("*.json"))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The demo's teacher (briefly trained) and student, saved."""
    folder = tmp_path_factory.mktemp("models")
    keras.utils.set_random_seed(0)
    (x, y), _ = datasets.mnist1d()
    teacher = demo.teacher_model()
    teacher.compile("adam", demo.hard_label_loss())
    teacher.fit(x, y, batch_size=256, epochs=1, verbose=0)
    teacher.save(folder / "teacher.keras")
    demo.student_model().save(folder / "student.keras")
    return folder


def distill(models, tmp_path, *extra):
    return cli.main([
        "distill", "--teacher", str(models / "teacher.keras"), "--student", str(models / "student.keras"),
        "--data", "mnist1d", "--epochs", "1", "--batch-size", "256", "--output", str(tmp_path / "out"),
        *extra,
    ])


def test_help_lists_every_subcommand_with_defaults():
    for command, expected in (("demo", "(default: kd_output)"), ("distill", "(default: 4.0)"),
                              ("export", "(default: none)")):
        result = subprocess.run(["keras-kd", command, "--help"], capture_output=True, text=True)
        assert result.returncode == 0 and expected in result.stdout, command
    result = subprocess.run(["keras-kd", "--help"], capture_output=True, text=True)
    assert all(c in result.stdout for c in ("demo", "distill", "export"))


def test_quick_demo_prints_the_table_and_writes_its_files(tmp_path, capsys):
    assert cli.main(["demo", "--quick", "--output", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    for row in ("teacher", "student, labels alone", "student, distilled", "student, distilled, int8 .tflite"):
        assert row in table
    for column in ("test accuracy", "parameters", "size on disk", "training time"):
        assert column in table
    for run in ("teacher", "student_alone", "distilled"):
        assert list((tmp_path / "logs" / run / "train").glob("events.out.tfevents.*"))
    student = keras.models.load_model(tmp_path / "student.keras")
    (_, _), (x_test, y_test) = datasets.mnist1d()
    accuracy = float((student.predict(x_test, verbose=0).argmax(-1) == y_test).mean())
    assert f"{100 * accuracy:.1f}%" in table  # the table reports the saved file
    assert (tmp_path / "student.tflite").stat().st_size > 0
    # Same architecture, same size: no optimizer state in the saved files.
    sizes = [(tmp_path / f).stat().st_size for f in ("student.keras", "student_alone.keras")]
    assert abs(sizes[0] - sizes[1]) < 0.02 * sizes[0]


def test_distill_with_features_cache_logs_and_int8_export(models, tmp_path, capsys):
    code = distill(models, tmp_path, "--feature", "conv1:conv1", "--feature", "conv3:conv1:attention",
                   "--cache-teacher", "--logdir", str(tmp_path / "logs"), "--export-tflite", "int8")
    assert code == 0
    out = capsys.readouterr().out
    assert "top-1 agreement" in out and "int8" in out
    assert keras.models.load_model(tmp_path / "out" / "student.keras").count_params() == (
        demo.student_model().count_params())
    assert (tmp_path / "out" / "student.tflite").exists()
    assert list((tmp_path / "logs" / "train").glob("events.out.tfevents.*"))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_every_shipped_config_runs(models, tmp_path, config):
    assert distill(models, tmp_path, "--config", str(config)) == 0


def test_npz_and_mocked_tfds_data(models, tmp_path):
    (x, y), (x_val, y_val) = datasets.mnist1d()
    np.savez(tmp_path / "d.npz", x=x[:512], y=y[:512], x_val=x_val[:128], y_val=y_val[:128])
    assert distill(models, tmp_path, "--data", f"npz:{tmp_path / 'd.npz'}") == 0
    with tfds.testing.mock_data(num_examples=32, policy=tfds.testing.MockPolicy.USE_CODE):
        (x_mock, y_mock), _ = datasets.load("tfds:mnist:train")
    assert x_mock.shape == (32, 28, 28, 1) and x_mock.max() <= 1.0 and y_mock.shape == (32,)


def test_export_command(models, tmp_path, capsys):
    code = cli.main(["export", str(models / "student.keras"), str(tmp_path / "s.tflite"),
                     "--quantization", "dynamic", "--representative-data", "mnist1d"])
    assert code == 0
    assert "top-1 agreement" in capsys.readouterr().out


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--teacher", "missing.keras"], "Teacher file 'missing.keras' does not exist."),
        (["--teacher", "{bad}"], "Teacher file '{bad}' is not a Keras model"),
        (["--feature", "conv9:conv1"], "`teacher_layer_name='conv9'`: 'conv9' is not a layer of teacher"),
        (["--feature", "conv2"], "--feature 'conv2' is not TEACHER_LAYER:STUDENT_LAYER[:LOSS]"),
        (["--feature", "conv2:conv1:fancy"], "Unknown feature loss 'fancy'"),
        (["--data", "cifar99"], "Unknown data spec 'cifar99'. Pass one of: mnist1d, digits"),
        (["--data", "digits"], "Data 'digits' has inputs of shape (8, 8, 1), but the models take (40, 1)"),
        (["--data", "{labels}"], "Data '{labels}' has labels up to 11 (12 classes), but the models output 10"),
        (["--config", "{noproj}"], "but their shapes differ: teacher (None, 20, 32), student (None, 20, 16). "
                                   "Pass projection='auto'"),
        (["--config", "{config}", "--temperature", "2"], "--config replaces --temperature"),
    ],
)
def test_bad_input_gets_one_line_and_exit_code_2(models, tmp_path, capsys, arguments, message):
    bad = tmp_path / "bad.keras"
    bad.write_text("not a model")
    (x, y), _ = datasets.mnist1d()
    np.savez(tmp_path / "labels.npz", x=x[:64], y=np.full(64, 11))
    no_projection = tmp_path / "noproj.json"
    no_projection.write_text(
        next(c for c in CONFIGS if "hints" in c.stem).read_text().replace('"projection": "auto"', '"projection": null'))
    substitutions = {"{bad}": str(bad), "{labels}": f"npz:{tmp_path / 'labels.npz'}",
                     "{noproj}": str(no_projection), "{config}": str(CONFIGS[0])}
    arguments = [substitutions.get(a, a) for a in arguments]
    message = message.format(labels=f"npz:{tmp_path / 'labels.npz'}", bad=str(bad))
    assert distill(models, tmp_path, *arguments) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error[-1].startswith("keras-kd distill: error: ")
    assert message in error[-1]
