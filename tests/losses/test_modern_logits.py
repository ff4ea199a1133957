"""Logit standardization, MLKD and CTKD against NumPy written from the papers."""

import keras
import numpy as np
import pytest

import keras_kd
from keras_kd import losses
from tests.helpers import numpy_kl, numpy_log_softmax, round_trip

RNG = np.random.default_rng(16)
TEACHER = RNG.normal(scale=3.0, size=(8, 6))
STUDENT = RNG.normal(scale=1.0, size=(8, 6))
LABELS = RNG.integers(0, 6, size=8)


def softmax(z):
    return np.exp(numpy_log_softmax(z))


def value(loss, teacher=TEACHER, student=STUDENT, **kwargs):
    return float(loss.compute_loss(keras.ops.array(teacher, "float32"),
                                   keras.ops.array(student, "float32"), **kwargs))


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
    [((), r"`temperatures` must be a non-empty list of positive numbers, but received \(\)"),
     ((2.0, 0.0), r"`temperatures\[1\]` must be > 0.0, but received 0.0"),
     ("hot", r"`temperatures` must be a non-empty list.*received 'hot'")],
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
