"""LogitsDistillation against values computed by hand and in NumPy."""

import keras
import numpy as np
import pytest

import keras_kd
from tests.helpers import numpy_kl, numpy_log_softmax, round_trip


def value(loss, teacher, student):
    return float(
        loss.compute_loss(
            keras.ops.array(teacher, "float32"),
            keras.ops.array(student, "float32"),
        )
    )


def test_default_is_kl_of_softened_distributions_pinned_by_hand():
    # KL([.665,.245,.090] || [.090,.245,.665]) = 1.1504 (computed by hand).
    loss = keras_kd.LogitsDistillation(temperature=1.0)
    assert value(loss, [[2.0, 1.0, 0.0]], [[0.0, 1.0, 2.0]]) == pytest.approx(
        1.1504, abs=1e-4
    )


def test_kl_stays_exact_where_probabilities_underflow():
    # p = [.5, .5], log q = [0, -200]: KL = .5 * 200 - log 2 = 99.3069.
    loss = keras_kd.LogitsDistillation(temperature=1.0)
    assert value(loss, [[0.0, 0.0]], [[100.0, -100.0]]) == pytest.approx(
        99.31, abs=0.01
    )


def test_string_and_instance_give_the_same_exact_value():
    teacher, student = [[2.0, 1.0, 0.0], [0.3, -1.0, 4.0]], [[0.0, 1.0, 2.0], [1.0, 1.0, 1.0]]
    by_string = keras_kd.LogitsDistillation(2.0, loss="kl_divergence")
    by_alias = keras_kd.LogitsDistillation(2.0, loss="kld")
    by_instance = keras_kd.LogitsDistillation(2.0, loss=keras.losses.KLDivergence())
    a, b, c = (value(loss, teacher, student) for loss in (by_string, by_alias, by_instance))
    assert a == b == c


def test_temperature_four_equals_t_squared_times_numpy_kl():
    rng = np.random.default_rng(1)
    teacher = rng.normal(scale=3.0, size=(16, 10))
    student = rng.normal(scale=3.0, size=(16, 10))
    loss = keras_kd.LogitsDistillation(temperature=4.0)
    assert value(loss, teacher, student) == pytest.approx(
        numpy_kl(teacher, student, 4.0), rel=1e-5
    )


def test_default_temperature_is_three_like_keras():
    rng = np.random.default_rng(2)
    teacher, student = rng.normal(size=(4, 5)), rng.normal(size=(4, 5))
    assert value(keras_kd.LogitsDistillation(), teacher, student) == pytest.approx(
        numpy_kl(teacher, student, 3.0), rel=1e-5
    )


def test_sequence_logits_average_over_every_position():
    rng = np.random.default_rng(3)
    teacher, student = rng.normal(size=(2, 7, 4)), rng.normal(size=(2, 7, 4))
    expected = numpy_kl(teacher.reshape(-1, 4), student.reshape(-1, 4), 2.0)
    loss = keras_kd.LogitsDistillation(temperature=2.0)
    assert value(loss, teacher, student) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(
    "loss", ["categorical_crossentropy", keras.losses.CategoricalCrossentropy()]
)
def test_cross_entropy_is_kl_plus_teacher_entropy(loss):
    rng = np.random.default_rng(4)
    teacher, student = rng.normal(size=(8, 6)), rng.normal(size=(8, 6))
    log_p = numpy_log_softmax(teacher / 2.0)
    entropy = -(np.exp(log_p) * log_p).sum(axis=-1).mean() * 4.0
    got = value(keras_kd.LogitsDistillation(2.0, loss=loss), teacher, student)
    assert got == pytest.approx(numpy_kl(teacher, student, 2.0) + entropy, rel=1e-5)


@pytest.mark.parametrize("loss", ["mse", keras.losses.MeanSquaredError()])
def test_other_losses_compare_temperature_scaled_logits(loss):
    rng = np.random.default_rng(5)
    teacher, student = rng.normal(size=(8, 6)), rng.normal(size=(8, 6))
    expected = np.mean((teacher / 2.0 - student / 2.0) ** 2)
    got = value(keras_kd.LogitsDistillation(2.0, loss=loss), teacher, student)
    assert got == pytest.approx(expected, rel=1e-5)


def test_list_of_losses_sums_the_outputs_and_skips_none():
    rng = np.random.default_rng(6)
    t1, s1, t2, s2 = (rng.normal(size=(4, 3)) for _ in range(4))
    loss = keras_kd.LogitsDistillation(1.0, loss=["kl_divergence", None])
    got = float(
        loss.compute_loss(
            [keras.ops.array(t1), keras.ops.array(t2)],
            [keras.ops.array(s1), keras.ops.array(s2)],
        )
    )
    assert got == pytest.approx(numpy_kl(t1, s1, 1.0), rel=1e-5)


@pytest.mark.parametrize(
    "temperature, message",
    [
        (0.0, r"`temperature` must be > 0.0, but received 0.0"),
        (-2, r"`temperature` must be > 0.0, but received -2"),
        ("hot", r"`temperature` must be a number, but received 'hot' of type str"),
        (True, r"`temperature` must be a number, but received True"),
    ],
)
def test_bad_temperature_is_refused_with_what_and_how(temperature, message):
    with pytest.raises(ValueError, match=message):
        keras_kd.LogitsDistillation(temperature=temperature)


def test_unknown_or_empty_loss_is_refused():
    with pytest.raises(ValueError, match=r"Unknown loss name .no_such_loss.. keras_kd.s names here"):
        keras_kd.LogitsDistillation(loss="no_such_loss")
    with pytest.raises(ValueError, match=r"at least one loss, but received \[None\]"):
        keras_kd.LogitsDistillation(loss=[None])


@pytest.mark.parametrize(
    "loss", ["kl_divergence", keras.losses.KLDivergence(), ["mse", None]]
)
def test_serialization_round_trip(loss):
    original = keras_kd.LogitsDistillation(temperature=2.5, loss=loss, name="kd")
    restored = round_trip(original)
    assert isinstance(restored, keras_kd.LogitsDistillation)
    assert restored.temperature == 2.5 and restored.name == "kd"
    rng = np.random.default_rng(7)
    teacher, student = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    if isinstance(loss, list):
        teacher, student = [teacher, teacher], [student, student]
        as_tensors = lambda v: [keras.ops.array(a) for a in v]  # noqa: E731
        assert float(restored.compute_loss(as_tensors(teacher), as_tensors(student))) == (
            float(original.compute_loss(as_tensors(teacher), as_tensors(student)))
        )
    else:
        assert value(restored, teacher, student) == value(original, teacher, student)


def two_headed(name, seed):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    return keras.Model(inputs, {"digit": keras.layers.Dense(3)(hidden),
                                "parity": keras.layers.Dense(2)(hidden)}, name=name)


@pytest.mark.parametrize(
    "loss, heads",
    [("kl_divergence", ("digit", "parity")),
     ({"digit": "kl_divergence", "parity": None}, ("digit",))],
)
def test_dict_outputs_are_distilled_output_by_output(loss, heads):
    teacher, student = two_headed("teacher", 0), two_headed("student", 1)
    x = np.random.default_rng(0).normal(size=(16, 6)).astype("float32")
    distiller = keras_kd.Distiller(teacher, student, keras_kd.LogitsDistillation(2.0, loss=loss),
                                   student_loss_weight=0.0)
    distiller.compile(optimizer="sgd")
    value = distiller.test_on_batch(x, return_dict=True)["distillation_loss"]
    t, s = teacher(x), student(x)
    expected = sum(numpy_kl(t[head], s[head], 2.0) for head in heads)
    assert value == pytest.approx(expected, rel=1e-5)


def test_the_fused_kl_has_the_autodiff_gradient():
    import tensorflow as tf

    rng = np.random.default_rng(5)
    teacher = tf.constant(rng.normal(size=(3, 4, 9)) * 3, "float32")
    student = tf.Variable(rng.normal(size=(3, 4, 9)) * 3, dtype="float32")
    weights = tf.constant(rng.uniform(size=(3, 4)), "float32")
    loss = keras_kd.LogitsDistillation(temperature=2.0)

    def reference():
        log_p = tf.nn.log_softmax(teacher / 2.0)
        log_q = tf.nn.log_softmax(student / 2.0)
        return tf.reduce_sum(tf.reduce_sum(tf.exp(log_p) * (log_p - log_q), -1) * 4.0 * weights)

    with tf.GradientTape(persistent=True) as tape:
        fused = tf.reduce_sum(loss.per_position(loss._terms, teacher, student) * weights)
        expected = reference()
    np.testing.assert_allclose(fused, expected, rtol=1e-6)
    np.testing.assert_allclose(tape.gradient(fused, student), tape.gradient(expected, student),
                               rtol=1e-5, atol=1e-7)
