"""Temperature scaling: fitted on validation data, folded into the last Dense."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_kd
from keras_kd import calibration
from tests.helpers import numpy_softmax


def blobs(n, seed):
    """Three overlapping Gaussian classes in 8 dimensions (some samples wrong)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    centers = np.eye(3, 8) * 1.5
    return (centers[y] + rng.normal(size=(n, 8))).astype("float32"), y


@pytest.fixture(scope="module")
def trained():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(16, activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3, name="logits")(hidden))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(*blobs(2000, 0), epochs=5, batch_size=64, verbose=0)
    return model


def scaled_copy(model, factor):
    """The model with its logits multiplied by `factor` (over-confident if > 1)."""
    copy = keras.models.clone_model(model)
    weights = model.get_weights()
    copy.set_weights(weights[:-2] + [weights[-2] * factor, weights[-1] * factor])
    return copy


def numpy_nll(logits, labels, temperature):
    z = logits / temperature
    log_p = z - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)) - z.max(-1, keepdims=True)
    return -log_p[np.arange(len(z)), labels].mean()


@pytest.mark.parametrize("factor", [4.0, 0.25], ids=["over-confident", "under-confident"])
def test_the_fitted_temperature_lowers_ece_and_keeps_every_prediction(trained, factor):
    model = scaled_copy(trained, factor)
    x_val, y_val = blobs(1000, 1)
    x_test, y_test = blobs(1000, 2)
    logits_before = model.predict(x_test, verbose=0)
    ece_before = calibration.expected_calibration_error(numpy_softmax(logits_before), y_test)

    temperature = keras_kd.calibrate(model, (x_val, y_val))

    assert (temperature > 1) if factor > 1 else (temperature < 1)
    # The NumPy likelihood is lowest at the fitted temperature.
    val_logits = scaled_copy(trained, factor).predict(x_val, verbose=0).astype(np.float64)
    best = numpy_nll(val_logits, y_val, temperature)
    assert best < numpy_nll(val_logits, y_val, temperature * 1.02)
    assert best < numpy_nll(val_logits, y_val, temperature / 1.02)

    logits_after = model.predict(x_test, verbose=0)
    np.testing.assert_array_equal(logits_after.argmax(-1), logits_before.argmax(-1))
    np.testing.assert_allclose(logits_after, logits_before / temperature, rtol=1e-5, atol=1e-5)
    ece_after = calibration.expected_calibration_error(numpy_softmax(logits_after), y_test)
    assert ece_before > 0.05 and ece_after < ece_before / 2, (ece_before, ece_after)


def test_the_folded_model_saves_and_exports_calibrated(trained, tmp_path):
    model = scaled_copy(trained, 4.0)
    x_val, y_val = blobs(1000, 1)
    x_test = blobs(200, 2)[0]
    original = model.predict(x_test, verbose=0)
    temperature = keras_kd.calibrate(model, (x_val, y_val))
    expected = numpy_softmax(original / temperature)

    model.save(tmp_path / "student.keras")
    reloaded = keras.models.load_model(tmp_path / "student.keras")
    np.testing.assert_allclose(numpy_softmax(reloaded.predict(x_test, verbose=0)), expected, atol=1e-5)

    keras_kd.export_student(model, tmp_path / "student.tflite")
    from_file = keras_kd.export.load_predictor(tmp_path / "student.tflite")(x_test)
    np.testing.assert_allclose(numpy_softmax(from_file), expected, atol=1e-5)


def test_a_softmax_head_is_calibrated_from_its_probabilities(trained):
    inputs = keras.Input((8,))
    body = keras.Model(trained.inputs, trained.layers[-2].output)
    probabilities = keras.layers.Dense(3, activation="softmax", name="predictions")(body(inputs))
    model = keras.Model(inputs, probabilities)
    model.layers[-1].set_weights([w * 4.0 for w in trained.layers[-1].get_weights()])
    x_val, y_val = blobs(1000, 1)
    logits = scaled_copy(trained, 4.0).predict(x_val, verbose=0)
    assert keras_kd.calibrate(model, (x_val, y_val)) == pytest.approx(
        calibration.fit_temperature(logits, y_val), rel=1e-4)
    np.testing.assert_allclose(model.predict(x_val, verbose=0),
                               numpy_softmax(logits / calibration.fit_temperature(logits, y_val)),
                               atol=1e-5)


def test_fit_temperature_on_fixed_numbers():
    # Two samples, both right: logits [2, 0] and [0, 1] with labels 0, 1, and
    # one wrong: [1, 0] with label 1. The NLL is minimized where
    # mean(E[z] - z_y) = 0; checked against a fine grid.
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    labels = np.array([0, 1, 1])
    temperature = calibration.fit_temperature(logits, labels)
    grid = np.exp(np.linspace(np.log(0.1), np.log(10), 20001))
    assert temperature == pytest.approx(grid[np.argmin([numpy_nll(logits, labels, t) for t in grid])], rel=1e-3)


def test_expected_calibration_error_on_fixed_numbers():
    # Confidences 0.9 (right), 0.9 (wrong), 0.6 (right): bins of width 1/15.
    # Bin (13/15, 14/15] holds two at 0.9 with one right: |1 - 1.8| = 0.8;
    # bin (8/15, 9/15] holds 0.6, right: |1 - 0.6| = 0.4. ECE = 1.2 / 3.
    p = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6]])
    assert calibration.expected_calibration_error(p, np.array([0, 1, 1])) == pytest.approx(0.4)


def test_heads_that_cannot_hold_a_temperature_are_refused():
    inputs = keras.Input((8,))
    relu_head = keras.Model(inputs, keras.layers.Dense(3, activation="relu", name="head")(inputs), name="m")
    with pytest.raises(ValueError, match=r"must be a Dense layer with a linear or softmax activation, "
                                         r"but 'm' ends in 'head' \(Dense with activation 'relu'\): "
                                         r"dividing its weights by T would not divide the logits by T"):
        keras_kd.calibrate(relu_head, blobs(10, 0))
    scaled = keras.Model(inputs, keras.layers.Rescaling(2.0, name="scale")(keras.layers.Dense(3)(inputs)),
                         name="m2")
    with pytest.raises(ValueError, match=r"but 'm2' ends in 'scale' \(Rescaling\): it has no weights to hold T"):
        keras_kd.calibrate(scaled, blobs(10, 0))


def test_bad_labels_and_separable_data_are_refused(trained):
    x, y = blobs(50, 3)
    with pytest.raises(ValueError, match=r"needs one class id in \[0, 3\) per sample, but received labels "
                                         r"of shape \(50, 3\) .* `y.argmax\(-1\)`"):
        keras_kd.calibrate(scaled_copy(trained, 1.0), (x, np.eye(3)[y]))
    # Every sample right by a wide margin: the likelihood rises as T -> 0.
    inputs = keras.Input((3,))
    head = keras.layers.Dense(3)
    separable = keras.Model(inputs, head(inputs))
    head.set_weights([20.0 * np.eye(3, dtype="float32"), np.zeros(3, "float32")])
    with pytest.raises(ValueError, match=r"likelihood keeps rising as T -> 0 .* more, or harder, held-out"):
        keras_kd.calibrate(separable, (np.eye(3, dtype="float32")[y], y))


def test_a_last_layer_that_does_not_compute_the_output_is_restored_and_refused():
    # A subclassed model lists its layers in the order they were assigned:
    # here `layers[-1]` is the hidden Dense, not the head that gives the output.
    class Model(keras.Model):
        def __init__(self):
            super().__init__(name="subclassed")
            self.head = keras.layers.Dense(3, bias_initializer="ones")
            self.hidden = keras.layers.Dense(16, bias_initializer="ones")

        def call(self, x):
            return self.head(keras.activations.relu(self.hidden(x)))

    model = Model()
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(*blobs(2000, 0), epochs=3, batch_size=64, verbose=0)
    x_val, y_val = blobs(1000, 1)
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(ValueError, match=r"last layer 'dense_\d+' by T=.*, but the model's outputs did not "
                                         r"become its logits divided by T: .* The weights are restored"):
        keras_kd.calibrate(model, (x_val, y_val))
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)


def test_non_finite_outputs_empty_or_unbatched_data_and_mismatched_labels_are_refused(trained):
    x, y = blobs(50, 3)
    model = scaled_copy(trained, 1.0)
    before = [w.copy() for w in model.get_weights()]
    broken = x.copy()
    broken[40, 0] = np.inf  # past the 64-input probe of the fold check: caught before any fit
    with pytest.raises(ValueError, match=r"non-finite values \(inf or NaN\) on 1 of the 50 validation "
                                         r"samples \(the first at index 40\)"):
        keras_kd.calibrate(model, (broken, y))
    with pytest.raises(ValueError, match=r"needs one label per validation input, but received 0 inputs"):
        keras_kd.calibrate(model, (x[:0], y[:0]))
    with pytest.raises(ValueError, match=r"received 50 inputs and labels of shape \(20,\)"):
        keras_kd.calibrate(model, (x, y[:20]))
    with pytest.raises(ValueError, match=r"no batch axis. Batch it \(`dataset.batch\(256\)`\)"):
        keras_kd.calibrate(model, tf.data.Dataset.from_tensor_slices((x, y)))
    with pytest.raises(ValueError, match="received an empty validation data set"):
        keras_kd.calibrate(model, tf.data.Dataset.from_tensor_slices((x, y)).batch(8).take(0))
    for weight, value in zip(model.get_weights(), before):
        np.testing.assert_array_equal(weight, value)  # nothing was folded


def test_a_batched_dataset_of_a_two_input_model_is_not_taken_for_unbatched():
    # Inputs of ranks 3 and 2: a dict's order need not be the model's inputs'.
    a, b = keras.Input((2, 4), name="a"), keras.Input((8,), name="b")
    joined = keras.layers.Concatenate()([keras.layers.Flatten()(a), b])
    head = keras.layers.Dense(3, name="logits")
    model = keras.Model({"a": a, "b": b}, head(joined))
    kernel = np.zeros((16, 3), "float32")
    kernel[8:11] = np.eye(3)  # the logits are b's first three features: the class means
    head.set_weights([kernel, np.zeros(3, "float32")])
    x, y = blobs(64, 1)
    inputs = {"a": np.repeat(x[:, None, :4], 2, axis=1), "b": x}
    dataset = tf.data.Dataset.from_tensor_slices((inputs, y)).batch(16)
    temperature = keras_kd.calibrate(model, dataset)
    assert np.isfinite(temperature) and temperature > 0
