"""Feature and relation losses against independent NumPy implementations."""

import keras
import numpy as np
import pytest

import keras_kd
from keras_kd import losses
from tests.helpers import round_trip

RNG = np.random.default_rng(11)
TEACHER = RNG.normal(size=(6, 5, 4)).astype("float32")  # (batch, steps, channels)
STUDENT = RNG.normal(size=(6, 5, 3)).astype("float32")
TEACHER_FLAT = TEACHER.reshape(6, -1).astype("float64")
STUDENT_FLAT = STUDENT.reshape(6, -1).astype("float64")


def l2n(x):
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def smooth_l1(a, b):
    d = np.abs(a - b)
    return np.where(d < 1, 0.5 * d**2, d - 0.5).mean()


def np_attention(f):
    return l2n((np.abs(f.astype("float64")) ** 2).mean(-1).reshape(len(f), -1))


def np_similarity(f):
    return l2n(f @ f.T)


def np_distances(f):
    d = np.sqrt(((f[:, None, :] - f[None, :, :]) ** 2).sum(-1))
    off = ~np.eye(len(f), dtype=bool)
    return d / d[off].mean()


def np_angles(f):
    e = l2n(f[None, :, :] - f[:, None, :])  # e[a, b] = f_b - f_a, normalized
    return np.einsum("abd,acd->abc", e, e)


def np_pkt(f):
    f = l2n(f)
    s = (f @ f.T + 1) / 2
    return s / s.sum(1, keepdims=True)


def call(loss, teacher, student):
    return float(loss(keras.ops.array(teacher), keras.ops.array(student)))


def test_hint_is_mean_squared_error():
    student = TEACHER + 0.5
    assert call(losses.Hint(), TEACHER, student) == pytest.approx(0.25, rel=1e-6)


def test_cosine_distance():
    cos = (l2n(TEACHER_FLAT) * l2n(TEACHER_FLAT[::-1])).sum(-1)
    assert call(losses.CosineDistance(), TEACHER, TEACHER[::-1]) == pytest.approx(
        np.mean(1 - cos), rel=1e-5
    )


def test_attention_transfer_compares_maps_across_channel_counts():
    expected = ((np_attention(TEACHER) - np_attention(STUDENT)) ** 2).mean()
    assert call(losses.AttentionTransfer(), TEACHER, STUDENT) == pytest.approx(expected, rel=1e-5)


def test_similarity_preserving():
    diff = np_similarity(TEACHER_FLAT) - np_similarity(STUDENT_FLAT)
    assert call(losses.SimilarityPreserving(), TEACHER, STUDENT) == pytest.approx(
        (diff**2).sum() / 36, rel=1e-5
    )


def test_rkd_distance():
    expected = smooth_l1(np_distances(STUDENT_FLAT), np_distances(TEACHER_FLAT))
    assert call(losses.RKDDistance(), TEACHER, STUDENT) == pytest.approx(expected, rel=1e-4)


def test_rkd_angle():
    expected = smooth_l1(np_angles(STUDENT_FLAT), np_angles(TEACHER_FLAT))
    assert call(losses.RKDAngle(), TEACHER, STUDENT) == pytest.approx(expected, rel=1e-4)


def test_pkt():
    p, q = np_pkt(TEACHER_FLAT), np_pkt(STUDENT_FLAT)
    expected = (p * (np.log(p + 1e-7) - np.log(q + 1e-7))).mean()
    assert call(losses.PKT(), TEACHER, STUDENT) == pytest.approx(expected, rel=1e-4)


def test_relation_losses_are_zero_for_identical_relations():
    for loss in (losses.SimilarityPreserving(), losses.RKDDistance(), losses.RKDAngle(), losses.PKT()):
        # A scaled copy has the same normalized relations.
        assert call(loss, TEACHER, 3.0 * TEACHER) == pytest.approx(0.0, abs=1e-6), loss


def test_feature_distillation_defaults_to_mse_like_keras():
    loss = keras_kd.FeatureDistillation()
    assert loss.teacher_layer_name is None and loss.projection is None
    value = float(loss.compute_loss(keras.ops.array(TEACHER), keras.ops.array(TEACHER + 2.0)))
    assert value == pytest.approx(4.0, rel=1e-6)


@pytest.mark.parametrize(
    "loss",
    [losses.Hint(), losses.CosineDistance(), losses.AttentionTransfer(p=4),
     losses.SimilarityPreserving(), losses.RKDDistance(), losses.RKDAngle(), losses.PKT(1e-5)],
)
def test_feature_losses_round_trip_through_serialization(loss):
    wrapped = keras_kd.FeatureDistillation(
        loss=loss, teacher_layer_name="a/b", student_layer_name="c",
        projection="auto", name="f",
    )
    restored = round_trip(wrapped)
    assert type(restored.loss) is type(loss)
    assert restored.get_config() == wrapped.get_config()
    assert call(restored.loss, TEACHER, STUDENT if loss.alignment != "elementwise" else TEACHER + 1) == (
        call(loss, TEACHER, STUDENT if loss.alignment != "elementwise" else TEACHER + 1)
    )


def test_feature_distillation_with_a_layer_projection_round_trips():
    wrapped = keras_kd.FeatureDistillation(
        teacher_layer_name="a", student_layer_name="b",
        projection=keras.layers.Dense(4, name="proj"),
    )
    restored = round_trip(wrapped)
    assert isinstance(restored.projection, keras.layers.Dense)
    assert restored.projection.units == 4


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"student_layer_name": "block2"},
         r"received student_layer_name='block2' but no teacher_layer_name.*"
         r"teacher_layer_name=keras_kd.FINAL_OUTPUT"),
        ({"teacher_layer_name": "block3"},
         r"received teacher_layer_name='block3' but no student_layer_name"),
        ({"projection": "linear"},
         r"`projection` must be None, 'auto' or a keras.layers.Layer, but received 'linear'"),
        ({"loss": 3},
         r"`loss` must be a loss name, a keras Loss, a keras_kd feature loss or a "
         r"function, but received 3"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        keras_kd.FeatureDistillation(**kwargs)


def test_the_registry_resolves_names_for_python_and_the_cli():
    assert isinstance(keras_kd.losses.get("attention"), losses.AttentionTransfer)
    assert isinstance(keras_kd.losses.get("reverse_kl"), losses.ReverseKL)
    assert keras_kd.losses.get("mse") is keras.losses.get("mse")
    named = keras_kd.FeatureDistillation(loss="attention", teacher_layer_name="a", student_layer_name="b")
    assert isinstance(named._loss_fns, losses.AttentionTransfer)


@pytest.mark.parametrize(
    "make, message",
    [(lambda: keras_kd.losses.get("atention"),
      r"Unknown loss name 'atention'. keras_kd's names: feature losses \['attention', .*\], logit "
      r"losses \[.*'reverse_kl'\]; any keras.losses name works too"),
     (lambda: keras_kd.LogitsDistillation(loss="reverse_kld"),
      r"Unknown loss name 'reverse_kld'. keras_kd's names here: \['generalized_jsd', 'jensen_shannon', "
      r"'logits_distillation', 'logits_mse', 'reverse_kl'\]; any keras.losses name works too"),
     (lambda: keras_kd.FeatureDistillation(loss="atention"),
      r"Unknown loss name 'atention'. keras_kd's names here: \['attention', 'cosine', 'feature_distillation', 'hint', "
      r"'pkt', 'rkd_angle', 'rkd_distance', 'similarity'\]; any keras.losses name works too")],
)
def test_a_misspelled_loss_name_lists_what_exists(make, message):
    with pytest.raises(ValueError, match=message):
        make()
