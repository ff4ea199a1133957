"""Quantization-aware students: the simulation equals the int8 LiteRT file."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_kd
from keras_kd import quantization
from tests.helpers import dense_classifier, save_demo_models, sparse_ce, toy_data


def small_cnn(name="cnn"):
    """Conv+BN+ReLU6, depthwise+BN+hard-swish, a residual add, pooling, dense."""
    inputs = keras.Input((12, 12, 3), name="image")
    x = keras.layers.Conv2D(8, 3, use_bias=False, name="stem")(inputs)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.ReLU(6.0, name="stem_relu")(x)
    y = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    y = keras.layers.BatchNormalization(name="dw_bn")(y)
    y = keras.layers.Activation("hard_swish", name="dw_swish")(y)
    x = keras.layers.Add(name="residual")([x, y])
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.Conv2D(12, 1, activation="relu", name="expand")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, keras.layers.Dense(5, name="logits")(x), name=name)


def nested_model():
    """A Functional backbone and a Sequential head inside a Functional model."""
    inner_inputs = keras.Input((16,))
    hidden = keras.layers.Dense(32, activation="relu", name="inner_hidden")(inner_inputs)
    backbone = keras.Model(inner_inputs, keras.layers.Dense(16, name="inner_out")(hidden),
                           name="backbone")
    head = keras.Sequential([keras.Input((16,)), keras.layers.Dense(16, activation="tanh")],
                            name="head")
    inputs = keras.Input((20,), name="x")
    x = keras.layers.Dense(16, activation="relu", name="first")(inputs)
    return keras.Model(inputs, keras.layers.Dense(5, name="logits")(head(backbone(x))),
                       name="nested")


def images(n, shape, seed=0, scale=1.0):
    return (np.random.default_rng(seed).uniform(size=(n, *shape)) * scale).astype("float32")


def train_a_little(model, x, classes, steps=4):
    """Sets the ranges and moves the weights, as a short fine-tune would."""
    y = np.random.default_rng(1).integers(0, classes, size=len(x))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=sparse_ce())
    model.fit(x, y, batch_size=len(x) // steps, epochs=1, verbose=0, shuffle=False)


def assert_file_reproduces(model, x, tmp_path, max_steps=1.0):
    report = keras_kd.export_student(model, tmp_path / "student.tflite", quantization="int8",
                                     sample_inputs=x)
    assert report["float_operations"] == {}
    assert report["top1_agreement"] >= 0.995
    assert report["output_quantization_step"] > 0
    assert report["max_abs_difference_in_steps"] <= max_steps + 1e-4
    assert report["within_one_step"] >= (1.0 if max_steps == 1.0 else 0.99)
    return report


@pytest.mark.slow
def test_small_cnn_simulation_equals_the_litert_file(tmp_path):
    model = quantization.quantization_aware(small_cnn())
    x = images(256, (12, 12, 3))
    train_a_little(model, x[:128], 5)
    assert_file_reproduces(model, x[128:], tmp_path)


@pytest.mark.slow
def test_mobilenet_v3_small_simulation_equals_the_litert_file(tmp_path):
    student = keras.applications.MobileNetV3Small(
        weights=None, input_shape=(32, 32, 3), classes=10, minimalistic=False,
        classifier_activation=None)
    model = quantization.quantization_aware(student)
    names = [layer.name for layer in model.layers]
    assert "rescaling_scale_quantizer" in names  # x * scale + offset: two int8 operations
    assert "expanded_conv_squeeze_excite_relu" not in names  # fused into its Conv2D
    x = images(320, (32, 32, 3), scale=255.0)
    train_a_little(model, x[:128], 10)
    assert_file_reproduces(model, x[128:], tmp_path)


@pytest.mark.slow
def test_nested_model_simulation_equals_the_litert_file(tmp_path):
    model = quantization.quantization_aware(nested_model())
    assert {"backbone", "head"} <= {layer.name for layer in model.layers}
    x = np.random.default_rng(0).normal(size=(400, 20)).astype("float32")
    train_a_little(model, x[:200], 5)
    # Five int8 layers in a chain: LiteRT's integer kernels round each output
    # on their own (bias in int32, fixed-point rescaling), and a one-step
    # difference in one layer can become two in the next. Measured: top-1
    # 100%, 99.8% of the output values within one step, the rest two.
    assert_file_reproduces(model, x[200:], tmp_path, max_steps=2.0)


@pytest.mark.slow
def test_conv1d_student_simulation_equals_the_litert_file(tmp_path):
    inputs = keras.Input((40, 1), name="signal")
    x = keras.layers.Conv1D(8, 5, padding="same", use_bias=False, name="stem")(inputs)
    x = keras.layers.Activation("hard_swish")(keras.layers.BatchNormalization()(x))
    y = keras.layers.DepthwiseConv1D(5, padding="same", use_bias=False, name="dw")(x)
    y = keras.layers.Conv1D(8, 1, activation="relu6", name="project")(y)
    x = keras.layers.GlobalAveragePooling1D()(keras.layers.Add()([x, y]))
    model = quantization.quantization_aware(
        keras.Model(inputs, keras.layers.Dense(10, name="logits")(x)))
    signals = np.random.default_rng(0).normal(size=(400, 40, 1)).astype("float32")
    train_a_little(model, signals[:200], 10)
    # As in the nested model, LiteRT's kernels round on their own; the 1-D
    # convolutions run as 2-D ones with the same int8 parameters.
    assert_file_reproduces(model, signals[200:], tmp_path, max_steps=2.0)


def test_batch_normalization_is_folded_as_the_converter_folds_it():
    student = small_cnn()
    rng = np.random.default_rng(0)
    norm = student.get_layer("stem_bn")
    norm.set_weights([rng.uniform(0.5, 2, 8), rng.normal(size=8), rng.normal(size=8),
                      rng.uniform(0.5, 2, 8)])
    model = quantization.quantization_aware(student)
    layer = model.get_layer("stem")
    assert layer.activation == "relu6" and layer.batch_normalization is not None
    kernel, bias = (np.asarray(v) for v in layer.folded())
    x = images(4, (12, 12, 3))
    expected = student.get_layer("stem_bn")(student.get_layer("stem")(x), training=False)
    folded = keras.ops.conv(x, kernel) + bias
    np.testing.assert_allclose(np.asarray(folded), np.asarray(expected), atol=1e-5)
    # The kernel is rounded per output channel to 255 symmetric levels.
    rounded = np.asarray(layer.quantized_kernel())
    step = np.abs(kernel).max(axis=(0, 1, 2)) / 127
    np.testing.assert_allclose(rounded / step, np.round(rounded / step), atol=1e-3)
    assert np.abs(rounded - kernel).max() <= step.max() / 2 + 1e-6


def test_weights_are_copied_and_inference_before_training_is_unrounded():
    student = dense_classifier(8)
    model = quantization.quantization_aware(student)
    for a, b in zip(model.get_layer("hidden").layer.get_weights(),
                    student.get_layer("hidden").get_weights()):
        np.testing.assert_array_equal(a, b)
    assert model.get_layer("hidden").layer.kernel is not student.get_layer("hidden").kernel
    assert quantization.unset_ranges(model) == ["x_quantizer", "hidden_output_quantizer",
                                                "logits_output_quantizer"]
    x, _ = toy_data(8)
    model(x, training=True)
    assert quantization.unset_ranges(model) == []
    quantizer = model.get_layer("x_quantizer")
    assert float(quantizer.range_min.numpy()) == pytest.approx(min(x.min(), 0.0))
    assert float(quantizer.range_max.numpy()) == pytest.approx(x.max())


def test_straight_through_gradients_reach_every_weight():
    model = quantization.quantization_aware(small_cnn())
    x = images(16, (12, 12, 3))
    model(x, training=True)  # ranges set
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(model(x, training=True)))
    gradients = tape.gradient(loss, model.trainable_weights)
    names = [w.path for w in model.trainable_weights]
    assert any("gamma" in n for n in names) and any("beta" in n for n in names)
    for name, gradient in zip(names, gradients):
        assert gradient is not None, name
        assert float(tf.reduce_max(tf.abs(gradient))) > 0, name


def test_keras_round_trip_keeps_the_ranges(tmp_path):
    model = quantization.quantization_aware(small_cnn())
    x = images(32, (12, 12, 3))
    model(x, training=True)
    model(x * 2, training=True)
    path = tmp_path / "qat.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    ranges = {w.path: w.numpy() for w in model.non_trainable_weights}
    assert any("range_max" in p and v > 0 for p, v in ranges.items())
    assert {w.path: w.numpy() for w in loaded.non_trainable_weights}.keys() == ranges.keys()
    for w in loaded.non_trainable_weights:
        np.testing.assert_array_equal(w.numpy(), ranges[w.path], err_msg=w.path)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    assert quantization.output_step(loaded) == quantization.output_step(model)


def test_sequential_student_trains_under_a_distiller():
    teacher = dense_classifier(16, name="teacher")
    student = keras.Sequential([keras.Input((8,), name="x"),
                                keras.layers.Dense(8, activation="relu"),
                                keras.layers.Dense(3)], name="student")
    model = quantization.quantization_aware(student)
    distiller = keras_kd.Distiller(teacher, model, keras_kd.LogitsDistillation(4.0),
                                   student_loss_weight=0.5)
    distiller.compile(optimizer=keras.optimizers.SGD(0.1), loss=sparse_ce())
    x, y = toy_data(64)
    before = [w.numpy() for w in model.trainable_weights]
    history = distiller.fit(x, y, batch_size=16, epochs=1, verbose=0).history
    assert np.isfinite(history["loss"][0])
    assert quantization.unset_ranges(model) == []
    assert all(np.abs(a - w.numpy()).max() > 0 for a, w in zip(before, model.trainable_weights))


def _one_distilled_step(strategy, weights):
    x, y = toy_data(16, seed=3)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    with strategy.scope():
        teacher = dense_classifier(16, name="teacher")
        teacher.set_weights(weights["teacher"])
        student = dense_classifier(4, name="student")
        student.set_weights(weights["student"])
        model = quantization.quantization_aware(student)
        distiller = keras_kd.Distiller(teacher, model, keras_kd.LogitsDistillation(4.0),
                                       student_loss_weight=0.3)
        distiller.compile(optimizer=keras.optimizers.SGD(0.5), loss=sparse_ce())
    distiller.fit(dataset, epochs=1, verbose=0)
    return ([w.numpy() for w in model.trainable_weights],
            [w.numpy() for w in model.non_trainable_weights])


def test_two_replicas_update_weights_and_ranges_as_one_device(two_replicas):
    weights = {"teacher": dense_classifier(16).get_weights(),
               "student": dense_classifier(4).get_weights()}
    one = _one_distilled_step(tf.distribute.get_strategy(), weights)
    two = _one_distilled_step(two_replicas, weights)
    assert len(one) == len(two) == 2
    for a, b in zip(one[0] + one[1], two[0] + two[1]):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert max(np.abs(a - b).max() for a, b in zip(one[0], weights["student"])) > 1e-2
    assert all(value > 0 for value in one[1][1::3] + one[1][2::3])  # range_max, initialized


# ------------------------------------------------------------------ bad input


class Doubler(keras.layers.Layer):
    def call(self, x):
        return 2.0 * x


def with_custom_layer():
    inputs = keras.Input((8,), name="x")
    x = Doubler(name="doubler")(keras.layers.Dense(4, name="hidden")(inputs))
    return keras.Model(inputs, keras.layers.Dense(3, name="logits")(x))


def test_a_layer_without_int8_simulation_is_named_and_left_in_float():
    with pytest.warns(UserWarning, match=r"'doubler' \(Doubler\) has no int8 simulation in "
                                         r"keras_kd, so it is left in float32"):
        model = quantization.quantization_aware(with_custom_layer())
    assert "doubler_quantizer" in [layer.name for layer in model.layers]
    with pytest.raises(ValueError, match=r"'doubler' \(Doubler\) .* Pass strict=False"):
        quantization.quantization_aware(with_custom_layer(), strict=True)


def test_float16_policy_is_refused_with_the_reason():
    keras.config.set_dtype_policy("mixed_float16")
    student = dense_classifier(4)
    keras.config.set_dtype_policy("float32")
    with pytest.raises(ValueError, match=r"layer 'hidden' computes in float16 .*'mixed_float16'"
                                         r".*fake-quantization ops take float32 only"):
        quantization.quantization_aware(student)


def test_subclassed_and_already_quantized_models_are_refused():
    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__(name="sub")
            self.dense = keras.layers.Dense(3)

        def call(self, x):
            return self.dense(x)

    subclassed = Subclassed()
    subclassed(np.zeros((1, 8), "float32"))
    with pytest.raises(ValueError, match=r"'sub' \(Subclassed\) is a subclassed model"):
        quantization.quantization_aware(subclassed)
    model = quantization.quantization_aware(dense_classifier(4))
    with pytest.raises(ValueError, match="already quantization-aware"):
        quantization.quantization_aware(model)
    with pytest.raises(ValueError, match="takes a keras.Model, but received str"):
        quantization.quantization_aware("student.keras")


def test_export_before_training_is_refused(tmp_path):
    model = quantization.quantization_aware(dense_classifier(4))
    with pytest.raises(ValueError, match=r"3 range\(s\) were never set .*has not trained a step"):
        keras_kd.export_student(model, tmp_path / "s.tflite", quantization="int8")
    assert not os.path.exists(tmp_path / "s.tflite")


@pytest.mark.slow
def test_cli_distills_quantization_aware_and_exports_without_calibration_data(tmp_path, capsys):
    from keras_kd.app import cli

    save_demo_models(tmp_path)
    code = cli.main([
        "distill", "--teacher", str(tmp_path / "teacher.keras"),
        "--student", str(tmp_path / "student.keras"), "--data", "mnist1d", "--epochs", "1",
        "--batch-size", "256", "--output", str(tmp_path / "out"), "--quantization-aware"])
    assert code == 0
    trained = tmp_path / "out" / "student.keras"
    assert quantization.is_quantization_aware(keras.models.load_model(trained))
    capsys.readouterr()
    code = cli.main(["export", str(trained), str(tmp_path / "s.tflite"), "--quantization", "int8"])
    assert code == 0
    out = capsys.readouterr().out
    assert "float32 operations left  none" in out  # the demo student is all int8
    assert (tmp_path / "s.tflite").exists()
    # A float student still needs calibration data, and says a QAT student would not.
    assert cli.main(["export", str(tmp_path / "student.keras"), str(tmp_path / "f.tflite"),
                     "--quantization", "int8"]) != 0
    assert "--quantization-aware needs none either" in capsys.readouterr().err
