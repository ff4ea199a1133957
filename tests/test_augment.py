"""Consistent augmentation: one view for both models, labels mixed to match."""

import keras
import numpy as np
import pytest

import keras_kd
from keras_kd import augment
from tests.helpers import dense_classifier, sparse_ce, toy_data


def test_mixup_mixes_inputs_and_weights_the_two_labels():
    x = np.random.default_rng(0).normal(size=(16, 5, 2)).astype("float32")
    y = np.arange(16)
    mixed, targets = augment.Mixup(alpha=0.4, seed=1)(keras.ops.array(x), [(keras.ops.array(y), None)])
    (own, lam), (partner, other) = [(np.asarray(t), np.asarray(w)) for t, w in targets]
    np.testing.assert_array_equal(own, y)
    assert sorted(partner.tolist()) == list(range(16))  # a permutation
    np.testing.assert_allclose(lam + other, 1.0, rtol=1e-6)
    assert ((lam >= 0) & (lam <= 1)).all() and lam.std() > 0  # one draw per sample
    expected = lam[:, None, None] * x + (1 - lam[:, None, None]) * x[partner]
    np.testing.assert_allclose(mixed, expected, rtol=1e-5, atol=1e-6)


def test_mixup_carries_sample_weights_with_the_partner():
    x = np.zeros((8, 3), "float32")
    weights = np.arange(1, 9, dtype="float32")
    _, targets = augment.Mixup(seed=2)(keras.ops.array(x), [(keras.ops.arange(8), keras.ops.array(weights))])
    (_, own), (partner, other) = [(np.asarray(t), np.asarray(w)) for t, w in targets]
    lam = own / weights
    np.testing.assert_allclose(other, weights[partner] * (1 - lam), rtol=1e-5)


def test_random_shift_moves_each_sequence_and_pads_with_zeros():
    x = np.tile(np.arange(1, 11, dtype="float32")[None, :, None], (32, 1, 1))
    shifted = np.asarray(augment.RandomShift(3, seed=0)(keras.ops.array(x), [])[0])
    for row in shifted[:, :, 0]:
        nonzero = row[row != 0]
        assert len(nonzero) >= 7 and np.all(np.diff(nonzero) == 1)  # a contiguous window
    assert len({tuple(r) for r in shifted[:, :, 0]}) > 1


def test_teacher_and_student_see_the_same_augmented_view():
    teacher = dense_classifier(8)
    student = dense_classifier(8)
    student.set_weights(teacher.get_weights())
    distiller = keras_kd.Distiller(
        teacher, student, keras_kd.LogitsDistillation(temperature=1.0),
        student_loss_weight=0.0, augmentation=[augment.Mixup(seed=0), keras.layers.GaussianNoise(1.0)],
    )
    distiller.compile(optimizer=keras.optimizers.SGD(0.0))
    x, y = toy_data(32)
    logs = distiller.fit(x, y, batch_size=32, epochs=1, verbose=0).history
    assert logs["distillation_loss"][0] == pytest.approx(0.0, abs=1e-7)


def test_mixup_hard_label_loss_is_the_lambda_weighted_pair():
    """With lr=0 the logged student loss equals a NumPy mixup loss on the same draw."""
    x, y = toy_data(16)
    mixup = augment.Mixup(seed=5)
    probe = augment.Mixup(seed=5)  # same seed: same first draw
    mixed, targets = probe(keras.ops.array(x), [(keras.ops.array(y), None)])
    student = dense_classifier(4)
    logits = np.asarray(student(mixed))
    log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    expected = sum(
        -(np.asarray(w) * log_p[np.arange(16), np.asarray(t)]).mean() for t, w in targets
    )
    distiller = keras_kd.Distiller(dense_classifier(8), student, student_loss_weight=1.0, augmentation=mixup)
    distiller.compile(optimizer=keras.optimizers.SGD(0.0), loss=sparse_ce())
    logs = distiller.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False).history
    assert logs["student_loss"][0] == pytest.approx(expected, rel=1e-5)


def test_evaluate_does_not_augment():
    # An augmentation that changes the inputs whatever `training` says (unlike
    # GaussianNoise, which does nothing outside training): if `evaluate`
    # applied it, the losses would differ from an unaugmented Distiller's.
    teacher, student = dense_classifier(8), dense_classifier(4)
    shift = lambda x: x + 100.0
    x, y = toy_data(32)
    results = []
    for augmentation in (shift, None):
        distiller = keras_kd.Distiller(teacher, student, augmentation=augmentation)
        distiller.compile(optimizer="adam", loss=sparse_ce())
        results.append(distiller.evaluate(x, y, verbose=0))
    assert results[0] == results[1]
    # ...and the shift does change what the models see during training.
    shifted, _ = augment.as_augmentation(shift)(keras.ops.array(x), [(keras.ops.array(y), None)])
    np.testing.assert_allclose(shifted, x + 100.0)


def test_bad_augmentation_is_refused():
    with pytest.raises(ValueError, match=r"`augmentation` must be a keras_kd.augment.Augmentation, "
                                         r"a Keras preprocessing layer, .* but received 3"):
        keras_kd.Distiller(dense_classifier(8), dense_classifier(4), augmentation=3)
    with pytest.raises(ValueError, match=r"`alpha` must be > 0.0, but received 0"):
        augment.Mixup(alpha=0)
    with pytest.raises(ValueError, match=r"`max_shift` must be a non-negative int, but received -1"):
        augment.RandomShift(-1)


@pytest.mark.parametrize("shape", [(16, 20, 2), (8, 6, 6, 3)])
def test_cutmix_pastes_one_window_or_box_and_weights_labels_by_what_is_kept(shape):
    x = np.random.default_rng(0).normal(size=shape).astype("float32") + 10.0
    mixed, targets = augment.CutMix(seed=3)(keras.ops.array(x), [(keras.ops.arange(shape[0]), None)])
    mixed = np.asarray(mixed)
    (own, kept), (partner, other) = [(np.asarray(t), np.asarray(w)) for t, w in targets]
    np.testing.assert_allclose(kept + other, 1.0, rtol=1e-6)
    for i in range(shape[0]):
        from_partner = np.all(mixed[i] == x[partner[i]], axis=-1) & ~np.all(mixed[i] == x[i], axis=-1)
        from_self = np.all(mixed[i] == x[i], axis=-1)
        if partner[i] != i:
            assert np.all(from_partner | from_self)
            assert from_self.mean() == pytest.approx(kept[i], abs=1e-6)
            region = np.argwhere(from_partner)
            if len(region):  # a single contiguous window / box
                span = region.max(0) - region.min(0) + 1
                assert np.prod(span) == len(region)
    assert kept.std() > 0


def test_cutmix_gives_teacher_and_student_the_same_spliced_view():
    def sequence_model():
        inputs = keras.Input((12, 1))
        hidden = keras.layers.Flatten()(keras.layers.Conv1D(4, 3, padding="same")(inputs))
        return keras.Model(inputs, keras.layers.Dense(3)(hidden))

    teacher, student = sequence_model(), sequence_model()
    student.set_weights(teacher.get_weights())
    distiller = keras_kd.Distiller(teacher, student, keras_kd.LogitsDistillation(1.0),
                                   student_loss_weight=0.0, augmentation=augment.CutMix(seed=0))
    distiller.compile(optimizer=keras.optimizers.SGD(0.0))
    x = np.random.default_rng(0).normal(size=(32, 12, 1)).astype("float32")
    logs = distiller.fit(x, np.zeros(32), batch_size=32, epochs=1, verbose=0).history
    assert logs["distillation_loss"][0] == pytest.approx(0.0, abs=1e-7)


def test_cutmix_refuses_inputs_without_steps():
    distiller = keras_kd.Distiller(
        dense_classifier(8), dense_classifier(4), student_loss_weight=0.0,
        augmentation=augment.CutMix(seed=0),
    )
    distiller.compile(optimizer="adam")
    with pytest.raises(ValueError, match=r"CutMix takes \(batch, steps, channels\) or \(batch, height, "
                                         r"width, channels\) inputs, but received shape \(None, 8\)"):
        distiller.fit(*toy_data(16), epochs=1, verbose=0)


def test_a_distiller_with_augmentations_saves_and_reloads(tmp_path):
    augmentation = augment.Pipeline([augment.RandomShift(2, seed=1), augment.CutMix(alpha=0.5, seed=2),
                                     keras.layers.GaussianNoise(0.1)])
    inputs = keras.Input((12, 1))
    models = [keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(inputs)), name=n)
              for n in ("teacher", "student")]
    distiller = keras_kd.Distiller(*models, augmentation=augmentation)
    distiller.compile(optimizer="adam", loss=sparse_ce())
    distiller.save(tmp_path / "d.keras")
    loaded = keras.models.load_model(tmp_path / "d.keras")
    restored = loaded.augmentation
    assert [type(a).__name__ for a in restored.augmentations] == [
        "RandomShift", "CutMix", "InputAugmentation"]
    assert restored.augmentations[1].alpha == 0.5
    assert isinstance(restored.augmentations[2].transform, keras.layers.GaussianNoise)
