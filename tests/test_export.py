"""Student export: each format and quantization, checked in the LiteRT interpreter."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_kd
from keras_kd import export
from keras_kd.app import datasets
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
        ({"path": "s.tfite"}, ValueError,
         r"Export path '.*s.tfite' ends in '.tfite', which is not an export format. Use .tflite \(LiteRT\), "
         r".keras, or a folder name without a suffix for a SavedModel."),
        ({"path": "s.h5", "representative_data": np.zeros((4, 5), "float32"), "quantization": "int8"}, ValueError,
         r"ends in '.h5', which is not an export format"),
        ({"representative_data": np.zeros((4, 5), "float32"), "quantization": "int8"}, ValueError,
         r"^representative_data has inputs of shape \(5,\) per sample, but the student 'sequential.*' takes "
         r"\(8,\)\. Pass samples shaped like its input \(e.g. the training inputs\); this is the data, not the "
         r"converter."),
    ],
)
def test_bad_requests_are_refused(tmp_path, kwargs, error, message):
    student = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)])
    path = str(tmp_path / kwargs.pop("path", "s.tflite"))
    with pytest.raises(error, match=message):
        export.export_student(student, path, **kwargs)


def test_an_unbuilt_student_is_refused_before_the_converter(tmp_path):
    unbuilt = keras.Sequential([keras.layers.Dense(3)], name="fresh")
    with pytest.raises(ValueError, match=r"^The student 'fresh' is not built: it has no weights yet, so it was never "
                                         r"trained or loaded, and there is nothing trained to export"):
        export.export_student(unbuilt, str(tmp_path / "s.tflite"))
    assert not list(tmp_path.iterdir())


def test_a_student_the_converter_cannot_lower_gets_the_cause_and_a_fix(tmp_path):
    inputs = keras.Input((8,))
    outputs = keras.layers.Lambda(lambda t: tf.strings.to_number(tf.strings.as_string(t)))(inputs)
    student = keras.Model(inputs, outputs)
    with pytest.raises(RuntimeError, match=r"The TFLite converter could not lower the student .* "
                                           r"Try quantization=None or 'dynamic'"):
        export.export_student(student, str(tmp_path / "s.tflite"), "int8",
                              representative_data=np.zeros((4, 8), "float32"))


def litert_outputs(path, inputs):
    """Runs a .tflite file in the LiteRT interpreter, each array fed by its input name."""
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=path).get_signature_runner()
    details = runner.get_input_details()
    outputs = []
    for i in range(len(next(iter(inputs.values())))):
        out = runner(**{name: inputs[name][i:i + 1].astype(details[name]["dtype"]) for name in details})
        outputs.append(out["output_0"][0])
    return np.stack(outputs)


def test_float32_parity_figures_match_an_independent_interpreter_run(trained, float_file):
    student, _, (x_test, _) = trained
    path, report = float_file
    from ai_edge_litert.interpreter import Interpreter

    (name,) = Interpreter(model_path=path).get_signature_runner().get_input_details()  # its one input
    exported = litert_outputs(path, {name: x_test})
    reference = student.predict(x_test, verbose=0)
    assert report["max_abs_difference"] == pytest.approx(np.max(np.abs(exported - reference)), abs=1e-7)
    assert report["top1_agreement"] == np.mean(exported.argmax(-1) == reference.argmax(-1))


# ------------------------------------------------- token-id students (KerasHub)


@pytest.fixture(scope="module")
def lm():
    """A tiny GPT-2 (vocabulary 64, 1 layer) trained briefly to predict token + 1,
    and right-padded data `(x, y, sample_weight)` as KerasHub preprocessors give."""
    import keras_hub

    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.GPT2Backbone(vocabulary_size=64, num_layers=1, num_heads=2,
                                             hidden_dim=32, intermediate_dim=64, max_sequence_length=16)
    student = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    rng = np.random.default_rng(0)
    start = rng.integers(0, 64, (96, 1))
    tokens = ((start + np.arange(13)) % 64).astype("int32")
    lengths = rng.integers(5, 13, 96)
    mask = (np.arange(12) < lengths[:, None]).astype("int32")
    x = {"token_ids": tokens[:, :-1] * mask, "padding_mask": mask}
    y = tokens[:, 1:] * mask
    y[mask == 0] = 63  # what padding is labelled must not matter
    student.compile(keras.optimizers.Adam(0.01), sparse_ce(), weighted_metrics=[])
    student.fit(x, y, sample_weight=mask, batch_size=32, epochs=15, shuffle=False, verbose=0)
    return student, (x, y, mask)


@pytest.fixture(scope="module")
def lm_float_file(lm, tmp_path_factory):
    student, evaluation = lm
    path = str(tmp_path_factory.mktemp("lm") / "lm.tflite")
    return path, export.export_student(student, path, evaluation_data=evaluation)


def test_token_student_float32_file_feeds_inputs_by_name(lm, lm_float_file):
    student, (x, y, mask) = lm
    path, report = lm_float_file
    from ai_edge_litert.interpreter import Interpreter

    details = Interpreter(model_path=path).get_signature_runner().get_input_details()
    assert {name: d["dtype"] for name, d in details.items()} == {
        "token_ids": np.int32, "padding_mask": np.int32}
    assert report["max_abs_difference"] <= 1e-4
    assert report["top1_agreement"] == 1.0
    # Independently: the interpreter run here, accuracy over real tokens only.
    exported = litert_outputs(path, x)
    reference = student.predict(x, verbose=0)
    assert np.max(np.abs(exported - reference)) <= 1e-4
    real = mask == 1
    accuracy = np.mean(exported.argmax(-1)[real] == y[real])
    assert report["accuracy_exported"] == pytest.approx(accuracy, abs=1e-6)
    assert report["accuracy_keras"] == report["accuracy_exported"] > 0.5
    assert accuracy != pytest.approx(np.mean(exported.argmax(-1) == y), abs=1e-3)  # padding is left out


def test_token_parity_from_a_dataset_with_a_boolean_mask_uses_the_padding_mask(lm, lm_float_file):
    student, (x, y, mask) = lm
    path, report = lm_float_file
    as_bool = {"token_ids": x["token_ids"], "padding_mask": mask.astype(bool)}
    dataset = tf.data.Dataset.from_tensor_slices((as_bool, y)).batch(40)  # no sample_weight
    again = export.parity_report(path, student, evaluation_data=dataset)
    assert again["accuracy_exported"] == pytest.approx(report["accuracy_exported"], abs=1e-6)
    assert again["top1_agreement"] == 1.0


def test_token_student_dynamic_range_file(lm, lm_float_file, tmp_path):
    student, evaluation = lm
    report = export.export_student(student, str(tmp_path / "dyn.tflite"), "dynamic",
                                   evaluation_data=evaluation)
    assert report["top1_agreement"] >= 0.95
    assert report["bytes"] < lm_float_file[1]["bytes"]


def test_token_student_int8_keeps_int32_ids_and_names_its_float_operations(lm, tmp_path):
    student, (x, y, mask) = lm
    path = str(tmp_path / "int8.tflite")
    data = tf.data.Dataset.from_tensor_slices((x, y, mask)).batch(16)
    report = export.export_student(student, path, "int8", representative_data=data,
                                   evaluation_data=(x, y, mask))
    from ai_edge_litert.interpreter import Interpreter

    details = Interpreter(model_path=path).get_signature_runner().get_input_details()
    assert details["token_ids"]["dtype"] == np.int32
    assert report["top1_agreement"] >= 0.95
    assert "NEG" in report["float_operations"]  # GPT-2's layer normalizations
    assert "float32 operations left  " in export.format_report(report)
    with pytest.raises(ValueError, match=r"int8_io=True asks for a file an integer-only accelerator "
                                         r"can run, but the TFLite converter left operations .*NEG"):
        export.export_student(student, str(tmp_path / "io.tflite"), "int8", representative_data=data,
                              int8_io=True)
    assert not (tmp_path / "io.tflite").exists()


def test_int8_mlp_file_is_integer_only(trained, tmp_path):
    student, x, _ = trained
    report = export.export_student(student, str(tmp_path / "int8.tflite"), "int8",
                                   representative_data=x[:64])
    assert report["float_operations"] == {}


@pytest.mark.parametrize(
    "inputs, message",
    [
        ({"token_ids": np.full((2, 4), 1.5), "padding_mask": np.ones((2, 4))},
         r"Input 'token_ids' is int32 \(e.g. token ids\), but received float64 values that are not whole"),
        ({"token_ids": np.ones((2, 4), "int32")},
         r"takes a dict of inputs \['padding_mask', 'token_ids'\], but received \['token_ids'\]"),
        (np.ones((2, 4), "int32"), r"takes a dict of inputs .* but received one ndarray"),
    ],
)
def test_token_inputs_that_do_not_fit_are_refused(lm, lm_float_file, inputs, message):
    student, _ = lm
    with pytest.raises(ValueError, match=message):
        export.parity_report(lm_float_file[0], student, inputs)


def test_inputs_that_cannot_be_matched_by_name_are_refused_before_converting(tmp_path):
    a, b = keras.Input((4,), name="a"), keras.Input((4,), name="b")
    joined = keras.layers.Dense(2)(keras.layers.Concatenate()([a, b]))
    as_list = keras.Model([a, b], joined, name="as_list")
    with pytest.warns(UserWarning):
        renamed = keras.Model({"a": a, "z": b}, joined, name="renamed")
    for student, message in ((as_list, r"'as_list' takes a list of 2 inputs. Build it with a dict"),
                             (renamed, r"dict whose keys differ from them \(\{'z': 'b'\}\)")):
        with pytest.raises(ValueError, match=message):
            export.export_student(student, str(tmp_path / "s.tflite"))
        assert not (tmp_path / "s.tflite").exists()
