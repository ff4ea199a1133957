"""The logit-loss family at default arguments, against NumPy."""

import keras
import numpy as np
import pytest

import keras_kd
from keras_kd import losses
from keras_kd.losses.logits import mixture_logits
from tests.helpers import loss_value, numpy_kl, numpy_log_softmax, numpy_softmax, round_trip

RNG = np.random.default_rng(21)
TEACHER = RNG.normal(scale=2.0, size=(8, 5))
STUDENT = RNG.normal(scale=2.0, size=(8, 5))
LABELS = RNG.integers(0, 5, size=8)


softmax = numpy_softmax


def value(loss, teacher=TEACHER, student=STUDENT, **kwargs):
    return loss_value(loss, teacher, student, **kwargs)


def numpy_dkd(t, s, labels, temperature=4.0, alpha=1.0, beta=8.0):
    """mdistiller's dkd_loss, transcribed to NumPy."""
    gt = np.eye(t.shape[1])[labels]
    p_t, p_s = softmax(t / temperature), softmax(s / temperature)
    b_t = np.stack([(p_t * gt).sum(1), (p_t * (1 - gt)).sum(1)], 1)
    b_s = np.stack([(p_s * gt).sum(1), (p_s * (1 - gt)).sum(1)], 1)
    tckd = (b_t * (np.log(b_t) - np.log(b_s))).sum() / len(t) * temperature**2
    p2_t = softmax(t / temperature - 1000.0 * gt)
    log_p2_s = numpy_log_softmax(s / temperature - 1000.0 * gt)
    nckd = (p2_t * (np.log(p2_t + 1e-300) - log_p2_s)).sum() / len(t) * temperature**2
    return alpha * tckd + beta * nckd


def numpy_dist(t, s, temperature=1.0, beta=1.0, gamma=1.0):
    """The DIST authors' code, transcribed to NumPy."""
    y_s, y_t = softmax(s / temperature), softmax(t / temperature)

    def pearson(a, b):
        a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
        return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-8)

    inter = 1 - pearson(y_s, y_t).mean()
    intra = 1 - pearson(y_s.T, y_t.T).mean()
    return temperature**2 * (beta * inter + gamma * intra)


def test_reverse_kl_default():
    assert value(losses.ReverseKL()) == pytest.approx(numpy_kl(STUDENT, TEACHER, 1.0), rel=1e-5)


def test_jensen_shannon_default():
    p, q = softmax(TEACHER), softmax(STUDENT)
    m = (p + q) / 2
    expected = (0.5 * (p * np.log(p / m)).sum(1) + 0.5 * (q * np.log(q / m)).sum(1)).mean()
    assert value(losses.JensenShannon()) == pytest.approx(expected, rel=1e-5)


def test_logit_mse_default():
    assert value(losses.LogitMSE()) == pytest.approx(np.mean((TEACHER - STUDENT) ** 2), rel=1e-6)


def test_dkd_default_with_labels():
    assert value(losses.DKD(), labels=keras.ops.array(LABELS)) == pytest.approx(
        numpy_dkd(TEACHER, STUDENT, LABELS), rel=1e-4
    )


def test_dkd_without_labels_uses_the_teachers_top_class():
    assert value(losses.DKD(temperature=2.0, alpha=0.5, beta=2.0)) == pytest.approx(
        numpy_dkd(TEACHER, STUDENT, TEACHER.argmax(1), 2.0, 0.5, 2.0), rel=1e-4
    )


def test_dist_default():
    assert value(losses.DIST()) == pytest.approx(numpy_dist(TEACHER, STUDENT), rel=1e-5)


@pytest.mark.parametrize(
    "name, cls", [("reverse_kl", losses.ReverseKL), ("jensen_shannon", losses.JensenShannon),
                  ("logits_mse", losses.LogitMSE)],
)
def test_family_is_usable_through_logits_distillation(name, cls):
    through = keras_kd.LogitsDistillation(temperature=1.0, loss=name)
    assert value(through) == pytest.approx(value(cls()), rel=1e-6)


@pytest.mark.parametrize("inner", [losses.DKD(temperature=9.0), losses.CTKD(), losses.MLKD()],
                         ids=["DKD", "CTKD", "MLKD"])
def test_a_keras_kd_loss_inside_another_is_refused_not_given_two_temperatures(inner):
    name = type(inner).__name__
    with pytest.raises(ValueError, match=rf"`loss` received the keras_kd loss {name}\(...\), which has a "
                                         rf"temperature of its own.*distillation_losses=\[{name}\(temperature"):
        keras_kd.LogitsDistillation(temperature=4.0, loss=inner)


def test_numpy_scalars_are_numbers():
    assert losses.LogitStandardization(temperature=np.float32(2)).temperature == 2.0
    assert keras_kd.LogitsDistillation(np.int64(3)).temperature == 3.0
    assert losses.MLKD(temperatures=np.array([2.0, 3.0])).temperatures == (2.0, 3.0)
    assert losses.MLKD(temperatures=(np.float32(2.0),)).temperatures == (2.0,)
    with pytest.raises(ValueError, match=r"`temperature` must be a number, but received np.True_"):
        keras_kd.LogitsDistillation(np.bool_(True))


def test_losses_that_define_their_divergence_carry_no_unused_loss():
    assert losses.DKD().loss is None and losses.DIST().loss is None
    assert losses.ReverseKL().loss == "reverse_kl"


def test_mixture_of_teachers_is_the_mixture_of_distributions():
    second = RNG.normal(size=TEACHER.shape)
    mixed = mixture_logits([keras.ops.array(TEACHER), keras.ops.array(second)], [0.25, 0.75], 2.0)
    expected = 0.25 * softmax(TEACHER / 2) + 0.75 * softmax(second / 2)
    np.testing.assert_allclose(softmax(np.asarray(mixed) / 2.0), expected, rtol=1e-5)


@pytest.mark.parametrize(
    "loss",
    [losses.ReverseKL(2.0, name="r"), losses.JensenShannon(3.0), losses.LogitMSE(name="m"),
     losses.DKD(2.0, 0.5, 4.0), losses.DIST(2.0, 2.0, 0.5),
     keras_kd.LogitsDistillation(loss=keras.losses.KLDivergence())],
)
def test_serialization_round_trip(loss):
    restored = round_trip(loss)
    assert type(restored) is type(loss)
    assert restored.get_config() == loss.get_config()
    assert value(restored) == value(loss)


def test_bad_numbers_are_refused():
    with pytest.raises(ValueError, match=r"`beta` must be >= 0.0, but received -1"):
        losses.DKD(beta=-1)
    with pytest.raises(ValueError, match=r"`gamma` must be a number, but received 'x'"):
        losses.DIST(gamma="x")
