"""The keras-kd command: demo, distill and export end to end, and its errors."""

import configparser
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time
import types

import keras
import numpy as np
import pytest
import tensorflow_datasets as tfds

import keras_kd
from keras_kd import calibration, export
from keras_kd.app import cli, datasets, demo
from tests.helpers import save_demo_models

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "examples" / "configs").glob("*.json"))
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
ENV.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the command must quiet TensorFlow itself
# The console script (setup.cfg: keras-kd = keras_kd_launcher:main), run from this tree.
KERAS_KD = [sys.executable, "-m", "keras_kd_launcher"]


def keras_kd_process(*arguments, **kwargs):
    """Runs the keras-kd command of this tree in a fresh process."""
    return subprocess.run([*KERAS_KD, *arguments], capture_output=True, text=True, env=ENV, **kwargs)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The demo's teacher (briefly trained) and student, saved."""
    folder = tmp_path_factory.mktemp("models")
    keras.utils.set_random_seed(0)
    save_demo_models(folder)
    return folder


def distill(models, tmp_path, *extra):
    return cli.main([
        "distill", "--teacher", str(models / "teacher.keras"), "--student", str(models / "student.keras"),
        "--data", "mnist1d", "--epochs", "1", "--batch-size", "256", "--output", str(tmp_path / "out"),
        *extra,
    ])


def test_help_lists_every_subcommand_with_defaults(capsys):
    for command, expected in ((["demo"], "(default: kd_output, or kd_output_quick with --quick)"),
                              (["distill"], "(default: 4.0)"), (["export"], "(default: none)"),
                              (["plan"], "--student STUDENT the student's .keras file"),
                              ([], "--traceback")):
        with pytest.raises(SystemExit) as exit_:
            cli.main([*command, "--help"])
        assert exit_.value.code == 0
        assert expected in " ".join(capsys.readouterr().out.split()), command


@pytest.mark.slow
def test_console_command_starts_without_tensorflow_noise():
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    assert setup["options.entry_points"]["console_scripts"].split() == ["keras-kd", "=", "keras_kd_launcher:main"]
    assert "keras_kd_launcher" in setup["options"]["py_modules"]
    for arguments, expected in ((["--help"], "usage: keras-kd"), (["distill", "--help"], "--resume"),
                                (["--version"], f"keras-kd {keras_kd.__version__}\n")):
        result = keras_kd_process(*arguments)
        assert result.returncode == 0 and expected in result.stdout, arguments
        assert result.stderr == "", arguments  # no absl/oneDNN/cuInit lines


@pytest.mark.slow
@pytest.mark.parametrize("module", ["keras_kd", "keras_kd.app.cli"])
def test_python_dash_m_runs_the_command(module):
    result = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True, env=ENV)
    assert result.returncode == 0 and result.stdout == f"keras-kd {keras_kd.__version__}\n"


def test_setup_declares_what_tensorflow_datasets_imports():
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    # tensorflow-datasets imports importlib_resources without declaring it.
    assert "importlib_resources" in setup["options.extras_require"]["tfds"].split()
    assert setup["metadata"]["version"] == "attr: keras_kd._version.__version__"


DEMO_ROWS = ("teacher (2,000 other labelled)", "student, 200 labels", "keras.distillation, pool",
             "keras_kd, pool", "keras_kd, int8 .tflite", "yardstick: student, 2,200 labelled")


@pytest.mark.slow
def test_quick_demo_prints_the_table_verdicts_and_writes_its_files(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "kd_output").mkdir()  # a full demo's files are never touched by --quick
    assert cli.main(["demo", "--quick"]) == 0
    assert not list((tmp_path / "kd_output").iterdir())
    tmp_path = tmp_path / "kd_output_quick"
    lines = capsys.readouterr().out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("model  "))
    header = re.split(r"\s{2,}", lines[start])
    assert header == ["model", "test accuracy", "ECE", "parameters", "size on disk", "latency",
                      "training time"]
    table = {}
    for line in lines[start + 2:start + 2 + len(DEMO_ROWS)]:
        cells = re.split(r"\s{2,}", line.strip())
        table[cells[0]] = dict(zip(header, cells))
    assert tuple(table) == DEMO_ROWS
    note = lines[start + 2 + len(DEMO_ROWS)]
    assert "a smoke test of the pipeline, not results" in note  # right under the table
    for row in table.values():
        assert float(row["latency"].split()[0]) > 0
    assert table["keras_kd, int8 .tflite"]["training time"] == "-"
    assert " -> " in table["keras_kd, pool"]["ECE"]  # before and after calibration

    # The verdicts are computed from the printed accuracies.
    def accuracy(row):
        return float(table[row]["test accuracy"].rstrip("%"))

    verdicts = [line for line in lines if line.startswith("keras_kd ") and " points (ties within" in line]
    against = ("the student from labels", "keras.distillation", "the yardstick")
    assert len(verdicts) == 3
    for line, name, row, band in zip(verdicts, against, DEMO_ROWS[1:3] + DEMO_ROWS[5:],
                                     ("labels", "keras.distillation", "yardstick")):
        word, points = re.match(rf"keras_kd (BEATS|TIES|LOSES) {name}: ([-+][0-9.]+) points", line).groups()
        assert abs(float(points) - (accuracy("keras_kd, pool") - accuracy(row))) <= 0.1 + 1e-9
        assert f"(ties within ±{demo.TIE_BANDS[band]:.1f})" in line

    for run in ("teacher", "student_labels", "keras_distillation", "keras_kd", "yardstick"):
        assert list((tmp_path / "logs" / run / "train").glob("events.out.tfevents.*"))
    x_test, y_test = datasets.teacher_knows_more(0, 2500, 2500)["test"]
    student = keras.models.load_model(tmp_path / "student.keras")
    accuracy_saved = float((student.predict(x_test, verbose=0).argmax(-1) == y_test).mean())
    assert table["keras_kd, pool"]["test accuracy"] == f"{100 * accuracy_saved:.1f}%"  # the saved file
    int8 = export.load_predictor(tmp_path / "student.tflite")(x_test)
    assert table["keras_kd, int8 .tflite"]["test accuracy"] == f"{100 * (int8.argmax(-1) == y_test).mean():.1f}%"
    # The saved student is the calibrated one: its ECE is the table's "after".
    ece = calibration.expected_calibration_error(demo.probabilities(student, x_test), y_test)
    assert table["keras_kd, pool"]["ECE"].endswith(f"-> {100 * ece:.1f}%")
    assert (tmp_path / "report.html").stat().st_size > 0  # its content: tests/test_report.py
    # Same architecture, same size: no optimizer state in the saved files.
    sizes = [(tmp_path / f).stat().st_size for f in ("student.keras", "student_labels.keras")]
    assert abs(sizes[0] - sizes[1]) < 0.02 * sizes[0]


def test_no_calibration_is_the_classification_demo_option(capsys):
    assert cli.main(["demo", "lm", "--no-calibration"]) == 2
    assert "--no-calibration is the classification demo's" in capsys.readouterr().err


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
def test_every_shipped_config_runs(models, tmp_path, config, capsys):
    assert distill(models, tmp_path, "--config", str(config)) == 0
    # The config's terms and weights reached the step: its terms are logged by
    # name and the loss is the configured mix of hard-label and teacher terms.
    settings = json.loads(config.read_text())
    epoch_line = next(line for line in capsys.readouterr().out.splitlines() if "distillation_loss:" in line)
    logged = dict(re.findall(r"(\w+): (-?[\d.]+(?:e[-+]?\d+)?)", epoch_line))
    logged = {name: float(value) for name, value in logged.items()}
    names = {"LogitsDistillation": "logits_distillation", "FeatureDistillation": "feature_distillation"}
    terms = [names.get(entry["class_name"]) for entry in settings["distillation_losses"]]
    if len(terms) > 1:  # one term is logged as distillation_loss alone
        weights = settings["distillation_loss_weights"]
        assert logged["distillation_loss"] == pytest.approx(
            sum(w * logged[t] for w, t in zip(weights, terms)), abs=2e-3)
    weight = settings["student_loss_weight"]
    mixed = weight * logged["student_loss"] + (1 - weight) * logged["distillation_loss"]
    assert logged["loss"] == pytest.approx(mixed, abs=2e-3)


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


def test_plan_prints_the_pairs_and_the_distill_flags(models, capsys):
    code = cli.main(["plan", "--teacher", str(models / "teacher.keras"), "--student", str(models / "student.keras")])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["resolution", "teacher", "layer", "teacher", "shape", "student", "layer",
                                "student", "shape", "connector", "(projection='auto')"]
    assert lines[2].split() == ["20", "conv2", "20x32", "conv1", "20x16", "Conv1D", "kernel", "1,", "16", "->",
                                "32", "channels"]
    assert lines[3].split()[:5] == ["10", "conv4", "10x48", "conv2", "10x16"]
    assert lines[4] == "teacher stages without a partner of the same resolution: conv1 (40)"
    assert lines[-1] == "As keras-kd distill flags (mse, projection='auto'): --feature conv2:conv1 --feature conv4:conv2"


# Each case: (id, arguments, words the one error line must hold). Distill cases
# start from a run that would succeed (see DISTILL) and get a fresh --output.
BAD_INPUTS = [
    ("temperature-inf", ["--temperature", "inf"],
     "argument --temperature: expected a finite number > 0, received 'inf'"),
    ("learning-rate-nan", ["--learning-rate", "nan"],
     "argument --learning-rate: expected a finite number > 0, received 'nan'"),
    ("learning-rate-0", ["--learning-rate", "0"], "expected a finite number > 0, received '0'"),
    ("demo-seed-negative", ["demo", "--quick", "--seed", "-1"],
     "argument --seed: expected a whole number from 0 to 4294967295 (a random seed), received '-1'"),
    ("epochs-0", ["--epochs", "0"], "argument --epochs: expected a whole number >= 1, received '0'"),
    ("demo-epochs-huge", ["demo", "--quick", "--epochs", "99999999999999999999"],
     "argument --epochs: expected a whole number below 2**31, received '99999999999999999999'"),
    ("batch-size-0", ["--batch-size", "0"], "argument --batch-size: expected a whole number >= 1"),
    ("batch-size-fraction", ["--batch-size", "2.5"], "expected a whole number >= 1, received '2.5'"),
    ("student-weight-1.5", ["--student-loss-weight", "1.5"],
     "argument --student-loss-weight: expected a number in [0, 1], received '1.5'"),
    ("student-weight-nan", ["--student-loss-weight", "nan"], "expected a number in [0, 1], received 'nan'"),
    ("output-is-a-file", ["--output", "{files}/a_file"],
     "Output folder path '{files}/a_file' is a file, but a folder is written there"),
    ("output-inside-a-file", ["--output", "{files}/a_file/out"], "which is a file, not a folder"),
    ("output-has-a-student", ["--output", "{files}/finished"],
     "Student '{files}/finished/student.keras' already exists and is not replaced silently"),
    ("output-has-an-interrupted-run", ["--output", "{files}/interrupted"],
     "holds an interrupted run ('{files}/interrupted/backup'). Pass --resume"),
    ("resume-without-backup", ["--resume"], "holds no interrupted run (no 'backup' folder)"),
    ("resume-other-settings", ["--output", "{files}/interrupted", "--resume"],
     "--resume: the interrupted run had other settings (--learning-rate 0.5 then, 0.001 now). Pass the same"),
    ("resume-teacher-replaced", ["--output", "{files}/interrupted_other_teacher", "--resume"],
     "--resume: the --teacher file changed since the run was interrupted (same path, other content: SHA-256 "
     "000000000000 then"),
    ("resume-record-without-digests", ["--output", "{files}/interrupted_old_record", "--resume"],
     "holds no digests of its teacher, student and data, so resuming could mix two runs. Pass --force"),
    ("logdir-is-a-file", ["--logdir", "{files}/a_file"], "Log folder path '{files}/a_file' is a file"),
    ("config-unknown-class", ["--config", "{files}/unknown_class.json"],
     "distillation_losses[0] names class 'FancyLoss', which is not a keras_kd distillation loss. Use one of: "),
    ("config-is-a-list", ["--config", "{files}/list.json"], "holds a JSON list, but a JSON object"),
    ("config-not-json", ["--config", "{files}/a_file"], "Config file '{files}/a_file' is not JSON"),
    ("config-and-temperature", ["--config", "{files}/list.json", "--temperature", "2"],
     "--config replaces --temperature; pass one or the other"),
    ("config-without-projection", ["--config", "{files}/noproj.json"],
     "but their shapes differ: teacher (None, 20, 32), student (None, 20, 16). Pass projection='auto'"),
    ("feature-malformed", ["--feature", "conv2"], "--feature 'conv2' is not TEACHER_LAYER:STUDENT_LAYER[:LOSS]"),
    ("feature-unknown-loss", ["--feature", "conv2:conv1:fancy"], "Unknown feature loss 'fancy'"),
    ("feature-unknown-layer", ["--feature", "conv9:conv1"], "'conv9' is not a layer of teacher"),
    ("teacher-is-a-distiller", ["--teacher", "{files}/distiller.keras"],
     "Teacher file '{files}/distiller.keras' holds a saved Distiller, not a trained model: a Distiller carries "
     "its own teacher and outputs its student's predictions. Pass the student it trained"),
    ("plan-teacher-is-a-distiller", ["plan", "--teacher", "{files}/distiller.keras", "--student", "{student}"],
     "holds a saved Distiller, not a trained model"),
    ("temperature-1e9", ["--temperature", "1e9"],
     "`temperature` is 1e+09, above 1000: softened that much, the teacher's distribution is uniform to float32 "
     "precision and the distillation loss is rounding noise (exactly 0 at 1e9), so the student would learn "
     "nothing from the teacher. Pass a temperature <= 1000"),
    ("teacher-missing", ["--teacher", "{files}/missing.keras"], "Teacher file '{files}/missing.keras' does not exist"),
    ("teacher-not-a-model", ["--teacher", "{files}/a_file"], "Teacher file '{files}/a_file' is not a Keras model"),
    ("class-count-mismatch", ["--student", "{files}/student5.keras"],
     "The teacher outputs 10 classes but the student 5"),
    ("data-unknown-spec", ["--data", "cifar99"], "Unknown data spec 'cifar99'. Pass one of: mnist1d, digits"),
    ("data-text-file", ["--data", "npz:{files}/a_file"], "is not an .npz archive"),
    ("data-empty-file", ["--data", "npz:{files}/empty.npz"], "Data file '{files}/empty.npz' is empty (0 bytes)"),
    ("data-no-x", ["--data", "{files}/no_x.npz"], "has arrays ['inputs'] but no 'x'"),
    ("data-no-samples", ["--data", "{files}/no_samples.npz"], "has no samples (inputs of shape (0, 40, 1))"),
    ("data-objects", ["--data", "{files}/objects.npz"], "holds Python objects (dtype=object), which are not loaded"),
    ("data-nan-inputs", ["--data", "{files}/nan.npz"], "has 3 NaN or infinite input values (in 2 of 64 samples)"),
    ("labels-negative", ["--data", "{files}/negative.npz"], "has 3 of 64 labels that are negative (e.g. -1)"),
    ("labels-fractions", ["--data", "{files}/fractions.npz"], "has 2 of 64 labels that are not whole numbers (e.g. 0.5)"),
    ("labels-too-large", ["--data", "{files}/large.npz"],
     "has 4 of 64 labels that are 10 or more (e.g. 12), but labels must be class ids 0..9"),
    ("data-wrong-shape", ["--data", "digits"], "has inputs of shape (8, 8, 1), but the models take (40, 1)"),
    ("training-diverges", ["--learning-rate", "1e30"],
     "Training stopped: the loss became NaN or infinite in epoch 1"),
    ("export-onto-existing-file", ["export", "{student}", "{files}/a_file.tflite"],
     "Export '{files}/a_file.tflite' already exists and is not replaced silently"),
    ("export-saved-model-onto-file", ["export", "{student}", "{files}/a_file"],
     "Export path '{files}/a_file' is a file, but a folder is written there"),
    ("export-inside-a-file", ["export", "{student}", "{files}/a_file/s.tflite"], "which is a file, not a folder"),
    ("export-int8-without-data", ["export", "{student}", "{files}/s.tflite", "--quantization", "int8"],
     "--quantization int8 calibrates activation ranges on sample inputs: pass --representative-data SPEC"),
    ("export-int8-io-without-int8", ["export", "{student}", "{files}/s.tflite", "--int8-io"],
     "--int8-io applies to --quantization int8"),
    ("export-representative-wrong-shape", ["export", "{student}", "{files}/s.tflite", "--quantization", "int8",
                                           "--representative-data", "digits"],
     "representative_data has inputs of shape (8, 8, 1) per sample, but the student 'student' takes (40, 1). "
     "Pass samples shaped like its input"),
    ("export-unknown-suffix", ["export", "{student}", "{files}/s.tfite"],
     "Export path '{files}/s.tfite' ends in '.tfite', which is not an export format. Use .tflite (LiteRT), .keras"),
    ("export-student-missing", ["export", "{files}/missing.keras", "{files}/s.tflite"],
     "Student file '{files}/missing.keras' does not exist"),
    ("demo-output-is-a-file", ["demo", "--quick", "--output", "{files}/a_file"],
     "Demo output folder path '{files}/a_file' is a file, but a folder is written there. Pass a folder path"),
    ("demo-output-has-a-demo", ["demo", "--quick", "--output", "{files}/demo"],
     "Demo output folder '{files}/demo' already holds teacher.keras, report.html, which are not replaced "
     "silently. Pass another folder, or force the overwrite (--force"),
    ("demo-lm-output-has-a-demo", ["demo", "lm", "--quick", "--output", "{files}/demo"],
     "Demo output folder '{files}/demo' already holds teacher.keras, which are not replaced silently"),
    ("plan-without-student", ["plan", "--teacher", "{teacher}"], "the following arguments are required: --student"),
    ("plan-teacher-missing", ["plan", "--teacher", "{files}/missing.keras", "--student", "{student}"],
     "Teacher file '{files}/missing.keras' does not exist"),
    ("plan-student-not-a-model", ["plan", "--teacher", "{teacher}", "--student", "{files}/a_file"],
     "Student file '{files}/a_file' is not a Keras model"),
    ("plan-no-resolution-change", ["plan", "--teacher", "{teacher}", "--student", "{files}/student5.keras"],
     "has no change of spatial or sequence resolution along its main path (input 40, feature map "
     "resolutions none), so it has no stages to pair"),
    ("plan-no-shared-resolution", ["plan", "--teacher", "{teacher}", "--student", "{files}/coarse.keras"],
     "Teacher 'teacher' and student 'coarse' have no stage of the same resolution: teacher [40, 20, 10], "
     "student [8]. Give both models the same input size"),
]
COMMANDS = ("export", "plan", "demo")  # the other cases are distill's
DISTILL = ["distill", "--teacher", "{teacher}", "--student", "{student}", "--data", "{files}/tiny.npz",
           "--epochs", "1", "--batch-size", "32"]

# Runs every case through the console entry point in one process (one
# TensorFlow start-up), with each case's stdout and stderr captured at the
# file-descriptor level, so a traceback or a C++ log line would show.
DRIVER = """
import json, os, sys, tempfile, traceback
import keras_kd_launcher

def captured(fd):
    held = tempfile.TemporaryFile()
    saved = os.dup(fd)
    os.dup2(held.fileno(), fd)
    return held, saved

cases, destination = sys.argv[1:]
results = {}
for name, arguments in json.load(open(cases)).items():
    sys.argv = ["keras-kd", *arguments]
    sys.stdout.flush(); sys.stderr.flush()
    (out, saved_out), (err, saved_err) = captured(1), captured(2)
    try:
        code = keras_kd_launcher.main()
    except SystemExit as exit_:
        code = exit_.code
    except BaseException:
        traceback.print_exc()
        code = "escaped"
    sys.stdout.flush(); sys.stderr.flush()
    for fd, saved in ((1, saved_out), (2, saved_err)):
        os.dup2(saved, fd)
        os.close(saved)
    texts = []
    for held in (out, err):
        held.seek(0)
        texts.append(held.read().decode(errors="replace"))
    results[name] = {"code": code, "stdout": texts[0], "stderr": texts[1]}
with open(destination, "w") as file:
    json.dump(results, file)
"""


@pytest.fixture(scope="module")
def bad_input_results(models, tmp_path_factory):
    """Runs every BAD_INPUTS case; returns `(files folder, {case: result})`."""
    files = tmp_path_factory.mktemp("bad")
    make_bad_files(files, models)
    values = {"files": str(files), "teacher": str(models / "teacher.keras"),
              "student": str(models / "student.keras")}
    cases = {}
    for name, arguments, _ in BAD_INPUTS:
        if arguments[0] not in COMMANDS:
            arguments = [*DISTILL, "--output", str(files / f"out_{name}"), *arguments]
        cases[name] = [a.format(**values) for a in arguments]
    # The interrupted run differs from the resuming one in its learning rate only.
    record = cli.settings(cli.build_parser().parse_args(cases["resume-other-settings"]))
    (files / "interrupted" / "backup" / "run.json").write_text(json.dumps({**record, "learning_rate": 0.5}))
    # Same settings; the teacher's digest differs, or the record has none.
    for name, case, teacher in (("other_teacher", "resume-teacher-replaced", "0" * 64),
                                ("old_record", "resume-record-without-digests", None)):
        args = cli.build_parser().parse_args(cases[case])
        contents = cli.run_contents(args, [a for pair in cli.load_data_spec(args.data) for a in pair])
        record = {**cli.settings(args), **({"contents": {**contents, "teacher": teacher}} if teacher else {})}
        (files / f"interrupted_{name}" / "backup").mkdir(parents=True)
        (files / f"interrupted_{name}" / "backup" / "run.json").write_text(json.dumps(record))
    (files / "cases.json").write_text(json.dumps(cases))
    process = subprocess.run([sys.executable, "-c", DRIVER, str(files / "cases.json"), str(files / "results.json")],
                             capture_output=True, text=True, env=ENV)
    assert process.returncode == 0, process.stderr[-3000:]
    return files, json.loads((files / "results.json").read_text())


def make_bad_files(files, models):
    (x, y), (x_val, y_val) = datasets.mnist1d()
    x, y = x[:64], y[:64]
    np.savez(files / "tiny.npz", x=x, y=y, x_val=x_val[:32], y_val=y_val[:32])
    (files / "a_file").write_text("x,y\n1,2\n")
    (files / "a_file.tflite").write_bytes(b"a previous export")
    (files / "empty.npz").write_bytes(b"")
    np.savez(files / "no_x.npz", inputs=x)
    np.savez(files / "no_samples.npz", x=x[:0], y=y[:0])
    np.savez(files / "objects.npz", x=np.array([x[0], "text"], dtype=object))
    nan = x.copy()
    nan[3, :2], nan[7, 5] = np.nan, np.inf
    np.savez(files / "nan.npz", x=nan, y=y)
    for name, index, value in (("negative", [1, 2, 3], -1), ("fractions", [4, 5], 0.5), ("large", [0, 1, 2, 3], 12)):
        labels = y.astype("float32" if name == "fractions" else "int64")
        labels[index] = value
        np.savez(files / f"{name}.npz", x=x, y=labels)
    (files / "finished").mkdir()
    (files / "finished" / "student.keras").write_bytes(b"a previous run's student")
    (files / "interrupted" / "backup").mkdir(parents=True)
    (files / "demo").mkdir()
    (files / "demo" / "teacher.keras").write_bytes(b"a 300-epoch teacher")
    (files / "demo" / "report.html").write_text("<p>the user's report</p>")
    (files / "unknown_class.json").write_text(json.dumps({"distillation_losses": [{"class_name": "FancyLoss"}]}))
    (files / "list.json").write_text(json.dumps([{"class_name": "LogitsDistillation"}]))
    (files / "noproj.json").write_text(next(c for c in CONFIGS if "hints" in c.stem).read_text().replace(
        '"projection": "auto"', '"projection": null'))
    keras_kd.Distiller(keras.models.load_model(models / "teacher.keras"),
                       keras.models.load_model(models / "student.keras")).save(files / "distiller.keras")
    inputs = keras.Input((40, 1))
    keras.Model(inputs, keras.layers.Dense(5)(keras.layers.Flatten()(inputs))).save(files / "student5.keras")
    coarse = keras.layers.Flatten()(keras.layers.Conv1D(4, 5, strides=5)(inputs))  # length 8 only
    keras.Model(inputs, keras.layers.Dense(10)(coarse), name="coarse").save(files / "coarse.keras")


@pytest.mark.parametrize("name, arguments, message", BAD_INPUTS, ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_gets_one_line_and_exit_code_2(bad_input_results, name, arguments, message):
    files, results = bad_input_results
    result = results[name]
    lines = result["stderr"].splitlines()
    assert result["code"] == 2, result["stderr"][-2000:]
    assert len(lines) == 1 and "Traceback" not in result["stderr"], result["stderr"][-2000:]
    command = arguments[0] if arguments[0] in COMMANDS else "distill"
    assert lines[0].startswith(f"keras-kd {command}: error: ")
    assert message.format(files=files) in lines[0]
    assert "allow_pickle" not in lines[0]  # never advise unsafe loading
    if name == "training-diverges":
        assert "no student was written" in lines[0]
        assert "Invalid loss, terminating training" in result["stdout"]  # keras.callbacks.TerminateOnNaN
        assert not (files / f"out_{name}").joinpath("student.keras").exists()
        assert not (files / f"out_{name}").joinpath("backup").exists()
    else:
        assert "Epoch" not in result["stdout"]  # refused before training
    assert (files / "finished" / "student.keras").read_bytes() == b"a previous run's student"
    assert (files / "a_file.tflite").read_bytes() == b"a previous export"
    assert sorted(p.name for p in (files / "demo").iterdir()) == ["report.html", "teacher.keras"]
    assert (files / "demo" / "teacher.keras").read_bytes() == b"a 300-epoch teacher"


def test_traceback_flag_shows_the_full_error(models, tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        cli.main(["--traceback", "export", str(models / "student.keras"), str(tmp_path / "s.tflite"),
                  "--representative-data", "npz:missing.npz"])
    with pytest.raises(ValueError, match="does not exist"):
        cli.main(["export", str(models / "student.keras"), str(tmp_path / "s.tflite"),
                  "--representative-data", "npz:missing.npz", "--traceback"])


@pytest.mark.slow
def test_an_interrupted_distill_resumes_to_the_same_student(models, tmp_path):
    (x, y), _ = datasets.mnist1d()
    np.savez(tmp_path / "d.npz", x=x[:1024], y=y[:1024])
    arguments = ["distill", "--teacher", str(models / "teacher.keras"), "--student", str(models / "student.keras"),
                 "--data", f"npz:{tmp_path / 'd.npz'}", "--epochs", "4", "--batch-size", "32", "--seed", "3"]
    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen([*KERAS_KD, *arguments, "--output", str(interrupted)], env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = interrupted / "backup" / "training_metadata.json"  # written once an epoch is saved
    while not checkpoint.exists() and process.poll() is None:
        time.sleep(0.02)
    process.kill()
    process.wait()
    finished = json.loads(checkpoint.read_text())["epoch"]
    assert 1 <= finished < 4 and not (interrupted / "student.keras").exists()

    resumed = keras_kd_process(*arguments, "--output", str(interrupted), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"Epoch {finished + 1}/4" in resumed.stdout and "Epoch 1/4" not in resumed.stdout
    assert sorted(p.name for p in interrupted.iterdir()) == ["student.keras"]  # backup removed

    assert cli.main([*arguments, "--output", str(tmp_path / "uninterrupted")]) == 0
    whole = keras.models.load_model(tmp_path / "uninterrupted" / "student.keras").get_weights()
    for after_resume, reference in zip(keras.models.load_model(interrupted / "student.keras").get_weights(), whole):
        np.testing.assert_array_equal(after_resume, reference)


@pytest.mark.slow
def test_a_failed_save_keeps_the_previous_student_and_the_run(models, tmp_path, monkeypatch, capsys):
    output = tmp_path / "out"
    assert distill(models, tmp_path) == 0
    previous = (output / "student.keras").read_bytes()

    def save_then_fail(self, path, *args, **kwargs):
        with open(path, "wb") as file:
            file.write(b"half a model")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(keras.Model, "save", save_then_fail)
    assert distill(models, tmp_path, "--force") == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"keras-kd distill: error: Cannot write '{output / 'student.keras'}' (No space left on device): the previous "
        f"student.keras is unchanged; the trained epochs are kept in '{output / 'backup'}'. Free space and rerun "
        f"with --resume --force to write the student.")
    assert (output / "student.keras").read_bytes() == previous  # not truncated
    assert sorted(p.name for p in output.iterdir()) == ["backup", "student.keras"]  # no partial file

    monkeypatch.undo()
    assert distill(models, tmp_path, "--resume", "--force") == 0  # the trained epochs are not lost
    assert "Epoch" not in capsys.readouterr().out
    assert (output / "student.keras").read_bytes() != previous
    assert sorted(p.name for p in output.iterdir()) == ["student.keras"]


@pytest.mark.slow
def test_a_full_disk_during_a_backup_keeps_the_last_epoch_and_says_so(models, tmp_path, monkeypatch, capsys):
    output = tmp_path / "out"
    writes = []

    def full_after_two_epochs(folder):  # shutil.disk_usage, as the backup's free-space check reads it
        writes.append(folder)
        return types.SimpleNamespace(free=0 if len(writes) > 2 else 10**12)

    monkeypatch.setattr(shutil, "disk_usage", full_after_two_epochs)
    assert distill(models, tmp_path, "--epochs", "3") == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line == (f"keras-kd distill: error: Cannot write the backup of epoch 3 in '{output / 'backup'}' "
                    f"(no space left on device: 1.1 MiB needed, 0.0 MiB free): the backup of epoch 2 is kept in "
                    f"'{output / 'backup'}'; nothing else was written. Free space and resume (keras-kd: --resume).")
    assert sorted(p.name for p in (output / "backup").iterdir()) == [
        "epoch-2.weights.h5", "run.json", "training_metadata.json"]
    # A write killed mid-way (a crash in h5py) leaves its temporary file: recognised and removed.
    (output / "backup" / ".epoch-3.partial-0badf00d.weights.h5").write_bytes(b"half an HDF5 file")
    monkeypatch.undo()
    assert distill(models, tmp_path, "--epochs", "3", "--resume") == 0
    out = capsys.readouterr().out
    assert "Epoch 3/3" in out and "Epoch 2/3" not in out
    assert sorted(p.name for p in output.iterdir()) == ["student.keras"]


def test_a_failed_backup_write_leaves_the_previous_backup_whole(models, tmp_path, monkeypatch):
    student = keras.models.load_model(models / "student.keras")
    student.compile("adam", "mse")
    student.optimizer.build(student.trainable_variables)
    backup = keras_kd.callbacks.EpochBackup(tmp_path / "backup")
    backup.set_model(student)
    backup.save(1)
    saved = (tmp_path / "backup" / "epoch-1.weights.h5").read_bytes()

    def save_half_then_fail(self, path, *args, **kwargs):
        with open(path, "wb") as file:
            file.write(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(keras.Model, "save_weights", save_half_then_fail)
    with pytest.raises(OSError, match=r"^Cannot write the backup of epoch 2 in .*\(No space left on device\): "
                                      r"the backup of epoch 1 is kept in"):
        backup.save(2)
    assert sorted(p.name for p in (tmp_path / "backup").iterdir()) == ["epoch-1.weights.h5",
                                                                       "training_metadata.json"]
    assert (tmp_path / "backup" / "epoch-1.weights.h5").read_bytes() == saved
    monkeypatch.undo()
    assert backup.restore(student) == 1


def test_demo_replaces_its_files_only_with_force(tmp_path, monkeypatch):
    (tmp_path / "student.keras").write_bytes(b"the user's student")
    with pytest.raises(ValueError, match="already holds student.keras, which are not replaced silently"):
        demo.run(output=str(tmp_path), quick=True)
    assert (tmp_path / "student.keras").read_bytes() == b"the user's student"
    monkeypatch.setattr(demo.datasets, "teacher_knows_more",
                        lambda *args, **kwargs: (_ for _ in ()).throw(RuntimeError("training started")))
    with pytest.raises(RuntimeError, match="training started"):  # with --force the check lets it through
        cli.main(["--traceback", "demo", "--quick", "--output", str(tmp_path), "--force"])


def test_demo_logs_of_a_previous_run_are_refused_and_replaced_with_force(tmp_path, monkeypatch):
    old_run = tmp_path / "logs" / "keras_kd" / "train"
    old_run.mkdir(parents=True)
    (old_run / "events.out.tfevents.1").write_bytes(b"a previous run's curves")
    with pytest.raises(ValueError, match="already holds logs, which are not replaced silently"):
        demo.run(output=str(tmp_path), quick=True)
    assert (old_run / "events.out.tfevents.1").exists()
    monkeypatch.setattr(demo.datasets, "teacher_knows_more",
                        lambda *args, **kwargs: (_ for _ in ()).throw(RuntimeError("training started")))
    with pytest.raises(RuntimeError, match="training started"):
        demo.run(output=str(tmp_path), quick=True, force=True)
    assert not (tmp_path / "logs").exists()  # TensorBoard shows the new run, not both mixed


def test_flags_show_no_default_in_the_help(capsys):
    with pytest.raises(SystemExit):
        cli.main(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    # No "(default: True)" under --no-calibration: it would read as the opposite.
    assert "(keras_kd.calibrate) --seed SEED random seed (default: 0)" in text


def test_export_replaces_an_existing_file_only_with_force(models, tmp_path, capsys):
    target = tmp_path / "s.keras"
    target.write_bytes(b"a previous export")
    assert cli.main(["export", str(models / "student.keras"), str(target)]) == 2
    assert "already exists and is not replaced silently" in capsys.readouterr().err
    assert target.read_bytes() == b"a previous export"
    assert cli.main(["export", str(models / "student.keras"), str(target), "--force"]) == 0
    assert keras.models.load_model(target).count_params() == demo.student_model().count_params()
    assert [p.name for p in tmp_path.iterdir()] == ["s.keras"]
