"""Installing keras_kd: dependencies by need, the supported range, the backend.

- The core needs TensorFlow and Keras only; a feature used without its extra
  says in one line which extra to install and how (each optional package is
  made unimportable here, as if it were not installed).
- The same loss values on every supported TensorFlow/Keras: this file runs on
  the newest versions (`.ci/run`) and on the oldest (`.ci/oldest`).
- `import keras_kd` under another Keras backend says how to select TensorFlow.
"""

import configparser
import importlib
import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_kd
from keras_kd import _extras
from tests.helpers import dense_classifier, loss_value, numpy_kl

ROOT = pathlib.Path(__file__).resolve().parent.parent
OPTIONAL = ("keras-hub", "ai-edge-litert", "tensorflow-datasets", "importlib_resources", "mnist1d",
            "scikit-learn", "matplotlib", "tensorboard")


def requirements(section, key):
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    return [line.strip() for line in config[section][key].strip().splitlines()
            if line.strip() and not line.strip().startswith("#")]


def names(lines):
    return {line.split("[")[0].split(">")[0].split("<")[0].split("=")[0].strip() for line in lines}


def block(monkeypatch, package):
    """Makes `package` unimportable, as if it were not installed, for this test
    (its submodules already imported by other tests too)."""
    for name in [name for name in sys.modules if name == package or name.startswith(package + ".")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, package, None)


def forget(monkeypatch, module):
    """Makes the next import of `module` run it again (its module-level guard
    too); the old module object is put back after the test."""
    monkeypatch.delitem(sys.modules, module, raising=False)
    parent, _, name = module.rpartition(".")
    monkeypatch.delattr(sys.modules[parent], name, raising=False)  # `from parent import name`


def missing(feature, extra):
    return f"^{feature} needs the '{extra}' extra: pip install \"keras-kd\\[{extra}\\]\"$"


# ---------------------------------------------------------------- dependencies by need


def test_core_install_needs_tensorflow_and_keras_only():
    core = requirements("options", "install_requires")
    assert names(core) == {"tensorflow", "keras", "numpy"}
    assert "tensorflow>=2.19,<2.22" in core and "keras>=3.12,<3.16" in core


def test_each_extra_installs_what_its_features_need():
    extras = {extra: names(requirements("options.extras_require", extra))
              for extra in ("lm", "export", "tfds", "demo", "test", "docs")}
    assert extras["lm"] == {"keras-hub"}
    assert extras["export"] == {"ai-edge-litert"}
    assert extras["tfds"] == {"tensorflow-datasets", "importlib_resources", "tensorflow-metadata"}
    assert {"keras-hub", "ai-edge-litert", "mnist1d", "scikit-learn", "matplotlib"} <= extras["demo"]
    assert {"keras-kd", "pytest", "pytest-xdist", "ruff", "sybil"} <= extras["test"]
    assert extras["docs"] == {"mkdocs", "mkdocs-material", "mkdocstrings"}
    assert not names(requirements("options", "install_requires")) & set(OPTIONAL)


def test_export_student_to_tflite_names_the_export_extra(monkeypatch, tmp_path):
    block(monkeypatch, "ai_edge_litert")
    with pytest.raises(ModuleNotFoundError, match=missing("keras_kd.export_student", "export")):
        keras_kd.export_student(dense_classifier(4), tmp_path / "student.tflite")
    assert not list(tmp_path.iterdir())  # refused before converting


def test_keras_files_need_no_extra(monkeypatch, tmp_path):
    block(monkeypatch, "ai_edge_litert")
    report = keras_kd.export_student(dense_classifier(4), tmp_path / "student.keras")
    assert report["format"] == "keras" and (tmp_path / "student.keras").exists()


def test_load_predictor_and_parity_report_name_the_export_extra(monkeypatch, tmp_path):
    block(monkeypatch, "ai_edge_litert")
    path = tmp_path / "student.tflite"
    with pytest.raises(ModuleNotFoundError, match=missing("keras_kd.export.load_predictor", "export")):
        keras_kd.export.load_predictor(path)
    with pytest.raises(ModuleNotFoundError, match=missing("keras_kd.export.parity_report", "export")):
        keras_kd.export.parity_report(path, dense_classifier(4), sample_inputs=np.zeros((1, 8)))


@pytest.mark.parametrize("package, function, feature, extra", [
    ("mnist1d", "mnist1d", r"MNIST-1D data \(keras_kd.app.datasets.mnist1d\)", "demo"),
    ("sklearn", "digits", r"The digits data \(keras_kd.app.datasets.digits\)", "demo"),
    ("tensorflow_datasets", "tfds", r"tfds:NAME data \(keras_kd.app.datasets.tfds\)", "tfds"),
])
def test_app_data_names_its_extra(monkeypatch, package, function, feature, extra):
    from keras_kd.app import datasets

    block(monkeypatch, package)
    arguments = ("mnist",) if function == "tfds" else ()
    with pytest.raises(ModuleNotFoundError, match=missing(feature, extra)):
        getattr(datasets, function)(*arguments)


def test_lm_demo_names_the_demo_extra(monkeypatch):
    block(monkeypatch, "keras_hub")
    with pytest.raises(ModuleNotFoundError, match=missing(r"keras-kd demo lm \(keras_kd.app.demo_lm\)", "demo")):
        forget(monkeypatch, "keras_kd.app.demo_lm")
        importlib.import_module("keras_kd.app.demo_lm")


def test_demo_command_says_which_extra_in_one_line(monkeypatch, capsys, tmp_path):
    from keras_kd.app import cli

    block(monkeypatch, "matplotlib")
    forget(monkeypatch, "keras_kd.app.demo")
    forget(monkeypatch, "keras_kd.app.report")
    assert cli.main(["demo", "--quick", "--output", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        'keras-kd demo: error: The report of keras-kd demo (keras_kd.app.report) needs the '
        '\'demo\' extra: pip install "keras-kd[demo]"']


def test_a_broken_install_is_not_called_a_missing_extra(monkeypatch, tmp_path):
    # An extra's package that is installed but misses one of its own
    # dependencies: installing the extra again would not help, so the
    # error is Python's own, naming the module really missing.
    (tmp_path / "half_installed.py").write_text("import not_installed_dependency_of_it\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="not_installed_dependency_of_it") as raised:
        _extras.require("half_installed", "a feature", "demo")
    assert not isinstance(raised.value, _extras.MissingExtraError)


# ---------------------------------------------------------------- the same values on every version

# Computed on TensorFlow 2.21 / Keras 3.15.1, and equal on TensorFlow 2.19 /
# Keras 3.12 (.ci/oldest). Teacher [2, 1, 0] and student [0, 1, 2] are the
# hand-checked pair of tests/losses/test_logits.py; the other values are
# checked against NumPy here too.
LOSS_VALUES = [
    # (loss, teacher logits, student logits, value)
    (keras_kd.LogitsDistillation(temperature=1.0), [[2.0, 1.0, 0.0]], [[0.0, 1.0, 2.0]], 1.1504208),
    (keras_kd.LogitsDistillation(), [[2.0, 1.0, 0.0]], [[0.0, 1.0, 2.0]], 1.3092219),
    (keras_kd.LogitsDistillation(temperature=1.0), [[0.0, 0.0]], [[100.0, -100.0]], 99.306853),
    (keras_kd.LogitsDistillation(temperature=4.0), [[2.0, 1.0, 0.0, -1.0]], [[0.5, -1.0, 2.0, 0.0]],
     1.3999217),
]
# One step of SGD(0.1) on a Distiller, fixed weights and data (below).
STEP_LOGS = {"loss": 1.7140241, "total_loss": 1.7140241, "student_loss": 1.8202329,
             "distillation_loss": 1.6078153, "teacher_agreement": 0.25}
STUDENT_AFTER_STEP = [[-0.88904321, 0.54861033, 0.48586285], [0.42835116, 2.0821204, 1.9895403]]


@pytest.mark.parametrize("loss, teacher, student, expected", LOSS_VALUES)
def test_loss_values_are_the_same_on_every_supported_version(loss, teacher, student, expected):
    value = loss_value(loss, teacher, student)
    assert value == pytest.approx(numpy_kl(teacher, student, loss.temperature), rel=1e-5)
    assert value == pytest.approx(expected, rel=1e-6)


def test_one_distiller_step_is_the_same_on_every_supported_version():
    def with_weights(model, seed):
        rng = np.random.default_rng(seed)
        model.set_weights([rng.normal(scale=0.5, size=w.shape).astype("float32")
                           for w in model.get_weights()])
        return model

    teacher = with_weights(dense_classifier(16, name="teacher"), 1)
    student = with_weights(dense_classifier(4, name="student"), 2)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(8, 8)).astype("float32")
    y = rng.integers(0, 3, size=8)
    distiller = keras_kd.Distiller(
        teacher=teacher, student=student,
        distillation_losses=keras_kd.LogitsDistillation(temperature=2.0), student_loss_weight=0.5)
    distiller.compile(optimizer=keras.optimizers.SGD(0.1),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    logs = distiller.train_on_batch(x, y, return_dict=True)
    assert {name: float(value) for name, value in logs.items()} == pytest.approx(STEP_LOGS, rel=1e-5)
    np.testing.assert_allclose(student.predict(x[:2], verbose=0), STUDENT_AFTER_STEP, rtol=1e-5)


# ---------------------------------------------------------------- other backends

BACKEND_MESSAGE = (
    "ImportError: keras_kd runs on the TensorFlow backend, but Keras is set to '{backend}' "
    "(from {source}): set KERAS_BACKEND=tensorflow before importing Keras "
    '(or "backend": "tensorflow" in keras.json).')


def import_keras_kd(**environment):
    # `-c` with the repository first on the path: this checkout's keras_kd.
    env = {name: value for name, value in os.environ.items() if name not in ("KERAS_BACKEND", "KERAS_HOME")}
    result = subprocess.run(
        [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); import keras_kd", str(ROOT)],
        env={**env, **environment}, capture_output=True, text=True, timeout=300)
    return result.returncode, result.stderr.strip().splitlines()


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_import_under_another_backend_says_how_to_select_tensorflow(backend):
    returncode, stderr = import_keras_kd(KERAS_BACKEND=backend)
    assert returncode == 1
    assert stderr[-1] == BACKEND_MESSAGE.format(backend=backend, source=f"KERAS_BACKEND={backend}")
    # The check ran before Keras was imported (jax and torch are not installed).
    assert not any("No module named" in line for line in stderr)


def test_the_backend_of_keras_json_is_checked_too(tmp_path):
    (tmp_path / "keras.json").write_text(json.dumps({"backend": "jax"}))
    returncode, stderr = import_keras_kd(KERAS_HOME=str(tmp_path))
    assert returncode == 1
    assert stderr[-1] == BACKEND_MESSAGE.format(backend="jax", source=tmp_path / "keras.json")


def test_the_moved_demo_data_module_is_served_with_a_deprecation_warning():
    import keras_kd
    from keras_kd.app import datasets

    with pytest.warns(DeprecationWarning, match=r"`keras_kd.datasets` moved to `keras_kd.app.datasets`"):
        assert keras_kd.datasets is datasets
    with pytest.raises(AttributeError, match="module 'keras_kd' has no attribute 'dataset'"):
        keras_kd.dataset  # noqa: B018
