"""Student export: each format and quantization, checked in the LiteRT interpreter."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_kd
from keras_kd import datasets, export
from tests.helpers import sparse_ce


@pytest.fixture(scope="module")
def trained():
    """A 53k-parameter MLP student trained briefly on MNIST-1D, and its data."""
    keras.utils.set_random_seed(0)
    (x, y), (x_test, y_test) = datasets.mnist1d()
    student = keras.Sequential([
        keras.Input((40, 1)), keras.layers.Flatten(),
        keras.layers.Dense(256, activation="relu"), keras.layers.Dense(160, activation="relu"),
        keras.layers.Dense(10),
    ], name="student")
    student.compile("adam", sparse_ce())
    student.fit(x, y, batch_size=128, epochs=3, verbose=0)
    assert student.count_params() >= 50_000
    return student, x, (x_test[:300], y_test[:300])


@pytest.fixture(scope="module")
def float_file(trained, tmp_path_factory):
    student, _, evaluation = trained
    path = str(tmp_path_factory.mktemp("tflite") / "float.tflite")
    return path, export.export_student(student, path, evaluation_data=evaluation)


def test_float32_tflite_matches_keras(float_file):
    _, report = float_file
    assert report["quantization"] == "float32"
    assert report["max_abs_difference"] <= 1e-5
    assert report["top1_agreement"] == 1.0
    assert report["accuracy_exported"] == report["accuracy_keras"]


def test_float16_tflite_is_close(trained, float_file, tmp_path):
    student, _, evaluation = trained
    report = export.export_student(student, str(tmp_path / "f16.tflite"), "float16",
                                   evaluation_data=evaluation)
    assert report["max_abs_difference"] <= 1e-2
    assert report["bytes"] < 0.6 * float_file[1]["bytes"]


def test_dynamic_range_tflite_keeps_the_predictions(trained, float_file, tmp_path):
    student, _, evaluation = trained
    report = export.export_student(student, str(tmp_path / "dyn.tflite"), "dynamic",
                                   evaluation_data=evaluation)
    assert report["top1_agreement"] >= 0.95
    assert report["bytes"] <= 0.33 * float_file[1]["bytes"]


@pytest.mark.parametrize("source", ["array", "dataset", "generator"])
def test_full_int8_tflite_from_any_representative_data(trained, float_file, tmp_path, source):
    student, x, evaluation = trained
    data = {
        "array": x[:256],
        "dataset": tf.data.Dataset.from_tensor_slices((x[:256], np.zeros(256))).batch(32),
        "generator": lambda: (x[i:i + 16] for i in range(0, 256, 16)),
    }[source]
    path = str(tmp_path / "int8.tflite")
    report = export.export_student(student, path, "int8", representative_data=data,
                                   evaluation_data=evaluation)
    assert report["top1_agreement"] >= 0.95  # on held-out test inputs
    assert report["bytes"] <= 0.33 * float_file[1]["bytes"]
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path)
    assert interpreter.get_input_details()[0]["dtype"] == np.float32


def test_int8_inputs_and_outputs(trained, tmp_path):
    student, x, evaluation = trained
    path = str(tmp_path / "io.tflite")
    report = export.export_student(student, path, "int8", representative_data=x[:128],
                                   evaluation_data=evaluation, int8_io=True)
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path)
    assert interpreter.get_input_details()[0]["dtype"] == np.int8
    assert interpreter.get_output_details()[0]["dtype"] == np.int8
    assert report["top1_agreement"] >= 0.95


def test_a_distiller_exports_its_student_only(tmp_path):
    teacher = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4096), keras.layers.Dense(3)])
    student = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)])
    distiller = keras_kd.Distiller(teacher, student)
    x = np.random.default_rng(0).normal(size=(16, 8)).astype("float32")
    for name in ("s.keras", "s_saved_model", "s.tflite"):
        report = export.export_student(distiller, str(tmp_path / name), sample_inputs=x)
        assert report["max_abs_difference"] <= 1e-5, name
        assert report["size_ratio_to_teacher"] < 0.5, name
    assert len(keras.models.load_model(tmp_path / "s.keras").weights) == 2


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"quantization": "int4"}, ValueError,
         r"Unknown quantization 'int4'. Pass one of \[None, 'float16', 'dynamic', 'int8'\]"),
        ({"quantization": "int8"}, ValueError,
         r"quantization='int8' calibrates .* but representative_data is None"),
        ({"path": "s.keras", "quantization": "float16"}, ValueError,
         r"quantization='float16' applies to .tflite files, but the path is a keras export"),
    ],
)
def test_bad_requests_are_refused(tmp_path, kwargs, error, message):
    student = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)])
    path = str(tmp_path / kwargs.pop("path", "s.tflite"))
    with pytest.raises(error, match=message):
        export.export_student(student, path, **kwargs)


def test_a_student_the_converter_cannot_lower_gets_the_cause_and_a_fix(tmp_path):
    inputs = keras.Input((8,))
    outputs = keras.layers.Lambda(lambda t: tf.strings.to_number(tf.strings.as_string(t)))(inputs)
    student = keras.Model(inputs, outputs)
    with pytest.raises(RuntimeError, match=r"The TFLite converter could not lower the student .* "
                                           r"Try quantization=None or 'dynamic'"):
        export.export_student(student, str(tmp_path / "s.tflite"), "int8",
                              representative_data=np.zeros((4, 8), "float32"))
