"""Logit standardization, MLKD and CTKD against NumPy written from the papers."""

import math

import keras
import numpy as np
import pytest

import keras_kd
from keras_kd import losses
from tests.helpers import loss_value, numpy_kl, numpy_softmax, round_trip

RNG = np.random.default_rng(16)
TEACHER = RNG.normal(scale=3.0, size=(8, 6))
STUDENT = RNG.normal(scale=1.0, size=(8, 6))
LABELS = RNG.integers(0, 6, size=8)


softmax = numpy_softmax


def value(loss, teacher=TEACHER, student=STUDENT, **kwargs):
    return loss_value(loss, teacher, student, **kwargs)


def numpy_z_score(z):
    """The authors' `normalize`: (z - mean) / (1e-7 + std), PyTorch's std (ddof=1)."""
    z = np.asarray(z, np.float64)
    return (z - z.mean(-1, keepdims=True)) / (1e-7 + z.std(-1, ddof=1, keepdims=True))


def numpy_dkd(t, s, labels, temperature, alpha=1.0, beta=8.0):
    """Decoupled KD (Zhao et al. 2022, Eq. 7), written with explicit loops."""
    total = 0.0
    for t_row, s_row, label in zip(t, s, labels):
        p, q = softmax(t_row / temperature), softmax(s_row / temperature)
        b_p = np.array([p[label], 1 - p[label]])
        b_q = np.array([q[label], 1 - q[label]])
        rest = np.arange(len(p)) != label
        p_hat, q_hat = p[rest] / p[rest].sum(), q[rest] / q[rest].sum()
        tckd = (b_p * np.log(b_p / b_q)).sum()
        nckd = (p_hat * np.log(p_hat / q_hat)).sum()
        total += (alpha * tckd + beta * nckd) * temperature**2
    return total / len(t)


# ------------------------------------------------------ logit standardization


def test_logit_standardization_default_is_kd_at_two_on_z_scores():
    expected = numpy_kl(numpy_z_score(TEACHER), numpy_z_score(STUDENT), 2.0)
    assert value(losses.LogitStandardization()) == pytest.approx(expected, rel=1e-5)


def test_standardize_option_of_logits_distillation_is_the_named_loss():
    option = keras_kd.LogitsDistillation(temperature=2.0, standardize=True)
    assert value(option) == value(losses.LogitStandardization())
    # Standardizing cancels any scale and shift of either model's logits.
    assert value(option, 5.0 * TEACHER + 3.0, 0.5 * STUDENT - 1.0) == pytest.approx(
        value(option), rel=1e-4
    )


def test_standardized_dkd_is_dkd_on_z_scores():
    got = value(losses.DKD(temperature=2.0, standardize=True), labels=keras.ops.array(LABELS))
    expected = numpy_dkd(numpy_z_score(TEACHER), numpy_z_score(STUDENT), LABELS, 2.0)
    assert got == pytest.approx(expected, rel=1e-4)


def test_standardized_loss_is_masked_over_real_tokens():
    teacher, student = RNG.normal(size=(2, 5, 7)) * 4, RNG.normal(size=(2, 5, 7))
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], "float32")
    got = value(losses.LogitStandardization(), teacher, student, mask=keras.ops.array(mask))
    expected = numpy_kl(numpy_z_score(teacher), numpy_z_score(student), 2.0, mask=mask)
    assert got == pytest.approx(expected, rel=1e-5)


def test_standardize_must_be_a_bool():
    with pytest.raises(ValueError, match=r"`standardize` must be True or False, but received "
                                         r"'yes' of type str. Pass standardize=True"):
        keras_kd.LogitsDistillation(standardize="yes")


def test_registry_names_the_new_logit_losses():
    assert isinstance(losses.get("logit_standardization"), losses.LogitStandardization)
    assert isinstance(losses.get("mlkd"), losses.MLKD)
    with pytest.raises(ValueError, match=r"logit losses \[.*'logit_standardization', .*'mlkd'"):
        losses.get("mlk")


# ------------------------------------------------------------------- MLKD


def numpy_mlkd(t, s, temperatures=(2, 3, 4, 5, 6)):
    """Jin et al.'s kd_loss + bc_loss + cc_loss, summed over temperatures."""
    total = 0.0
    batch, classes = t.shape
    for temperature in temperatures:
        p, q = softmax(t / temperature), softmax(s / temperature)
        instance = np.mean([(p[i] * np.log(p[i] / q[i])).sum() for i in range(batch)])
        batch_level = ((p @ p.T - q @ q.T) ** 2).sum() / batch
        class_level = ((p.T @ p - q.T @ q) ** 2).sum() / classes
        total += instance * temperature**2 + batch_level + class_level
    return total


def test_mlkd_default():
    assert value(losses.MLKD()) == pytest.approx(numpy_mlkd(TEACHER, STUDENT), rel=1e-5)


def test_mlkd_is_zero_when_the_student_is_the_teacher():
    assert value(losses.MLKD(), TEACHER, TEACHER) == pytest.approx(0.0, abs=1e-6)


def test_mlkd_refuses_a_token_mask():
    mask = keras.ops.ones((8,))
    with pytest.raises(ValueError, match=r"MLKD's batch- and class-level terms relate the "
                                         r"positions of a batch.*use LogitsDistillation"):
        value(losses.MLKD(), mask=mask)


@pytest.mark.parametrize(
    "temperatures, message",
    [((), r"`temperatures` must be a positive number or a non-empty list of them, but received \(\)"),
     ((2.0, 0.0), r"`temperatures\[1\]` must be > 0.0, but received 0.0"),
     ("hot", r"`temperatures` must be a positive number or a non-empty list.*received 'hot'")],
)
def test_mlkd_bad_temperatures_are_refused(temperatures, message):
    with pytest.raises(ValueError, match=message):
        losses.MLKD(temperatures=temperatures)


# ------------------------------------------------------------ round trips


@pytest.mark.parametrize(
    "loss",
    [losses.LogitStandardization(3.0, name="ls"),
     keras_kd.LogitsDistillation(2.0, standardize=True),
     losses.DKD(2.0, standardize=True),
     losses.MLKD(temperatures=(1.0, 4.0), name="multi")],
)
def test_serialization_round_trip(loss):
    restored = round_trip(loss)
    assert type(restored) is type(loss)
    assert restored.get_config() == loss.get_config()
    assert value(restored) == value(loss)


# ------------------------------------------------------------------- CTKD


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def test_ctkd_default_is_kd_at_the_authors_starting_temperature():
    loss = losses.CTKD()
    start = 1.0 + 20.0 * sigmoid(1.0)  # t_start + t_end * sigmoid(global_T = 1)
    assert float(loss.temperature) == pytest.approx(start, rel=1e-6)
    assert value(loss) == pytest.approx(numpy_kl(TEACHER, STUDENT, start), rel=1e-5)


def test_ctkd_initial_temperature_and_mask():
    loss = losses.CTKD(initial_temperature=4.0)
    assert float(loss.temperature) == pytest.approx(4.0, rel=1e-6)
    teacher, student = RNG.normal(size=(2, 5, 7)) * 3, RNG.normal(size=(2, 5, 7))
    mask = np.array([[1, 1, 0, 0, 0], [1, 1, 1, 1, 0]], "float32")
    got = value(loss, teacher, student, mask=keras.ops.array(mask))
    assert got == pytest.approx(numpy_kl(teacher, student, 4.0, mask=mask), rel=1e-5)


def test_ctkd_reversal_follows_the_cosine_curriculum():
    loss = losses.CTKD(max_reversal=2.0, ramp_epochs=10)
    # The authors' CosineDecay(max_value=0, min_value=-1, num_loops=10) at
    # epochs 1, 2, ... (their count starts at 1), negated and scaled by 2.
    for epoch in range(14):
        authors = (math.cos(min(epoch + 1, 10) * math.pi / 10) + 1.0) * 0.5 * (0 - (-1)) + (-1)
        assert loss.reversal_at(epoch) == pytest.approx(-2.0 * authors, abs=1e-12)
    assert loss.reversal_at(0) > 0 and loss.reversal_at(9) == pytest.approx(2.0)
    loss.set_epoch(4)
    assert float(loss.reversal) == pytest.approx(loss.reversal_at(4), rel=1e-6)


def test_gradient_reversal_is_identity_forward_and_minus_lambda_backward():
    import tensorflow as tf

    from keras_kd.losses.curriculum import reverse_gradient

    x = tf.Variable([1.5, -2.0])
    with tf.GradientTape() as tape:
        y = reverse_gradient(x, 0.3)
        total = tf.reduce_sum(y * tf.constant([2.0, 5.0]))
    np.testing.assert_array_equal(y.numpy(), x.numpy())
    np.testing.assert_allclose(tape.gradient(total, x), [-0.6, -1.5], rtol=1e-6)


def ctkd_distiller(loss):
    from tests.helpers import dense_classifier

    keras.utils.set_random_seed(3)
    teacher = dense_classifier(16, classes=4, name="teacher")
    student = dense_classifier(4, classes=4, name="student")
    distiller = keras_kd.Distiller(teacher, student, loss, student_loss_weight=0.0)
    distiller.compile(optimizer=keras.optimizers.SGD(0.5))
    return distiller, teacher, student


def test_ctkd_temperature_ascends_the_loss_while_the_student_descends():
    loss = losses.CTKD(initial_temperature=3.0)
    distiller, teacher, student = ctkd_distiller(loss)
    assert any(v is loss.layer.logit for v in distiller.trainable_variables)
    loss.set_epoch(20)  # full reversal strength, λ = 1
    x = np.random.default_rng(0).normal(size=(32, 8)).astype("float32")
    t = keras.ops.convert_to_numpy(teacher(x))
    s_before = keras.ops.convert_to_numpy(student(x))

    def kd(temperature, s):
        return numpy_kl(t, s, temperature)

    slope = (kd(3.0 + 1e-3, s_before) - kd(3.0 - 1e-3, s_before)) / 2e-3
    logs = distiller.train_on_batch(x, return_dict=True)
    assert logs["ctkd_temperature"] == pytest.approx(float(loss.temperature), rel=1e-6)
    moved = float(loss.temperature) - 3.0
    assert abs(slope) > 1e-4 and moved * slope > 0  # T went up the loss
    s_after = keras.ops.convert_to_numpy(student(x))
    assert kd(3.0, s_after) < kd(3.0, s_before)  # the student went down it


def test_fit_advances_the_curriculum_and_the_learned_temperature_is_saved(tmp_path):
    loss = losses.CTKD()
    distiller, _, _ = ctkd_distiller(loss)
    x = np.random.default_rng(1).normal(size=(16, 8)).astype("float32")
    history = distiller.fit(x, epochs=3, batch_size=8, verbose=0)
    assert float(loss.reversal) == pytest.approx(loss.reversal_at(2), rel=1e-6)
    assert len(history.history["ctkd_temperature"]) == 3
    learned = float(loss.temperature)
    assert learned != pytest.approx(1.0 + 20.0 * sigmoid(1.0), abs=1e-6)
    distiller.save(tmp_path / "d.keras")
    loaded = keras.saving.load_model(tmp_path / "d.keras").distillation_losses[0]
    assert float(loaded.temperature) == learned


@pytest.mark.parametrize(
    "kwargs, message",
    [({"initial_temperature": 30.0}, r"`initial_temperature` must lie strictly between "
                                     r"min_temperature=1.0 and .*=21.0, but received 30.0"),
     ({"ramp_epochs": 2.5}, r"`ramp_epochs` must be a whole number of epochs, but received 2.5"),
     ({"max_reversal": -1}, r"`max_reversal` must be >= 0.0, but received -1")],
)
def test_ctkd_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        losses.CTKD(**kwargs)


def test_ctkd_round_trip():
    loss = losses.CTKD(min_temperature=0.5, temperature_range=10.0, initial_temperature=2.0,
                       max_reversal=0.5, ramp_epochs=5, name="curriculum")
    restored = round_trip(loss)
    assert type(restored) is losses.CTKD and restored.get_config() == loss.get_config()
    assert value(restored) == pytest.approx(value(loss), rel=1e-7)
    assert isinstance(losses.get("ctkd"), losses.CTKD)


@pytest.mark.parametrize(
    "loss, message",
    [(keras_kd.LogitsDistillation(1.0, standardize=True),
      r"holds no full logits to standardize, but this loss has standardize=True"),
     (losses.MLKD(), r"MLKD compares full class distributions, but the teacher outputs come "
                     r"from a top-K cache"),
     (losses.CTKD(), r"CTKD learns a temperature, but the teacher outputs come from a top-K cache")],
)
def test_a_top_k_teacher_cache_is_refused_with_the_reason(loss, message):
    from keras_kd import lm

    top = lm.top_k_targets(keras.ops.array(TEACHER, "float32"), 3, dtype="float32")
    with pytest.raises(ValueError, match=message):
        loss.compute_loss(top, keras.ops.array(STUDENT, "float32"))
