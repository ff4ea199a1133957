"""Argument checks shared by every module: what they refuse, and the line they give."""

import keras
import numpy as np
import pytest

import keras_kd
from keras_kd import _validation
from keras_kd.losses.logits import MLKD, log_softmax_at
from tests.helpers import dense_classifier, numpy_log_softmax


def test_a_distiller_is_refused_as_teacher_or_student_with_what_to_pass():
    distiller = keras_kd.Distiller(dense_classifier(16, name="t"), dense_classifier(4, name="s"))
    with pytest.raises(ValueError, match=r"^`teacher` is a Distiller \('distiller'\), not a trained model: .* "
                                         r"Pass `distiller.student` \(or the student's .keras file\) instead."):
        keras_kd.Distiller(distiller, dense_classifier(4, name="s2"))
    with pytest.raises(ValueError, match=r"^`student` is a Distiller"):
        keras_kd.Distiller(dense_classifier(16, name="t2"), distiller)
    keras_kd.Distiller(dense_classifier(16, name="t3"), distiller.student)  # what the message says works


def test_a_temperature_that_erases_the_teacher_is_refused_with_the_reason():
    with pytest.raises(ValueError, match=r"`temperature` is 1e\+09, above 1000: softened that much, the teacher's "
                                         r"distribution is uniform to float32 precision"):
        keras_kd.LogitsDistillation(temperature=1e9)
    with pytest.raises(ValueError, match=r"`temperatures\[1\]` is 5000, above 1000"):
        MLKD(temperatures=(2.0, 5000.0))
    assert keras_kd.LogitsDistillation(temperature=1000.0).temperature == 1000.0


def test_the_temperature_bound_is_where_float32_still_resolves_the_loss():
    """The documented reason for MAX_TEMPERATURE, measured: the float32 loss
    matches float64 at the bound, and at 1e9 is 0 where the true value is its
    large-T limit, half the variance of the logit difference (Hinton et al.)."""
    rng = np.random.default_rng(0)
    teacher, student = rng.normal(0, 3, (2, 256, 10)).astype("float32")

    def reference(temperature):
        log_p, log_q = numpy_log_softmax(teacher / temperature), numpy_log_softmax(student / temperature)
        return np.mean(np.sum(np.exp(log_p) * (log_p - log_q), -1)) * temperature**2

    def float32_loss(temperature):  # as LogitsDistillation computes it
        log_p, log_q = log_softmax_at(teacher, temperature), log_softmax_at(student, temperature)
        kl = keras.ops.sum(keras.ops.exp(log_p) * (log_p - log_q), axis=-1)
        return float(keras.ops.mean(kl)) * np.float32(temperature) ** 2

    bound = _validation.MAX_TEMPERATURE
    np.testing.assert_allclose(float32_loss(bound), reference(bound), rtol=2e-3)
    limit = 0.5 * np.mean(np.var(teacher.astype("float64") - student, axis=-1))
    np.testing.assert_allclose(reference(bound), limit, rtol=1e-3)
    assert float32_loss(1e9) == 0.0 and limit > 7.0
