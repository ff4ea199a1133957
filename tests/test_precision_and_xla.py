"""Mixed-precision students and XLA-compiled steps."""

import keras
import numpy as np
import pytest

import keras_kd
from keras_kd import augment
from tests.helpers import dense_classifier, sparse_ce, toy_data


def ten_steps(policy, teacher, initial, jit_compile=False, **kwargs):
    """Weights of a student built under `policy` after 10 SGD steps."""
    keras.config.set_dtype_policy(policy)
    student = dense_classifier(32, name="student")
    keras.config.set_dtype_policy("float32")
    student.set_weights(initial)
    distiller = keras_kd.Distiller(teacher, student, keras_kd.LogitsDistillation(2.0),
                                   student_loss_weight=0.3, **kwargs)
    distiller.compile(optimizer=keras.optimizers.SGD(0.1), loss=sparse_ce(), jit_compile=jit_compile)
    x, y = toy_data(160, seed=4)
    history = distiller.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0).history
    return [w.numpy().astype("float32") for w in student.trainable_weights], history, distiller


def relative_gap(moved, reference, initial):
    reference_step = np.concatenate([(r - i).ravel() for r, i in zip(reference, initial)])
    gap = np.concatenate([(m - r).ravel() for m, r in zip(moved, reference)])
    return np.linalg.norm(gap) / np.linalg.norm(reference_step)


def test_mixed_float16_student_moves_like_the_float32_one():
    teacher = dense_classifier(64, name="teacher")
    initial = dense_classifier(32, name="init").get_weights()
    reference, _, _ = ten_steps("float32", teacher, initial)
    mixed, history, distiller = ten_steps("mixed_float16", teacher, initial)
    assert isinstance(distiller.optimizer, keras.optimizers.LossScaleOptimizer)
    assert distiller.student.layers[-1].compute_dtype == "float16"
    assert relative_gap(mixed, reference, initial) <= 0.10
    assert np.isfinite(history["loss"]).all()


def test_mixed_bfloat16_student_distils():
    teacher = dense_classifier(64, name="teacher")
    initial = dense_classifier(32, name="init").get_weights()
    reference, _, _ = ten_steps("float32", teacher, initial)
    mixed, _, _ = ten_steps("mixed_bfloat16", teacher, initial)
    assert relative_gap(mixed, reference, initial) <= 0.10


def test_huge_teacher_logits_stay_finite_for_a_float16_student():
    inputs = keras.Input((8,))
    base = dense_classifier(16, name="base")
    teacher = keras.Model(inputs, keras.layers.Rescaling(1e4)(base(inputs)), name="teacher")
    x, _ = toy_data(160, seed=4)
    assert np.abs(teacher.predict(x, verbose=0)).max() > 1e4
    weights, history, _ = ten_steps("mixed_float16", teacher, dense_classifier(32, name="i").get_weights())
    assert np.isfinite(history["distillation_loss"]).all()
    assert all(np.isfinite(w).all() for w in weights)


def test_xla_compiled_step_matches_the_default_step():
    teacher = dense_classifier(64, name="teacher")
    initial = dense_classifier(32, name="init").get_weights()
    reference, history, _ = ten_steps("float32", teacher, initial)
    compiled, xla_history, _ = ten_steps("float32", teacher, initial, jit_compile=True)
    assert relative_gap(compiled, reference, initial) <= 1e-4
    assert xla_history["loss"] == pytest.approx(history["loss"], rel=1e-4)


def two_epochs_with_taps(teacher, initial, jit_compile, augmentation=None):
    """Student + connector weights and history after 2 SGD epochs with a feature tap."""
    keras.utils.set_random_seed(0)  # the connector's initial weights
    student = dense_classifier(32, name="student")
    student.set_weights(initial)
    distiller = keras_kd.Distiller(
        teacher, student,
        [keras_kd.LogitsDistillation(), keras_kd.FeatureDistillation(
            teacher_layer_name="hidden", student_layer_name="hidden", projection="auto")],
        augmentation=augmentation,
    )
    distiller.compile(optimizer=keras.optimizers.SGD(0.1), loss=sparse_ce(), jit_compile=jit_compile)
    x, y = toy_data(64)
    history = distiller.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0).history
    return [w.numpy() for w in distiller.trainable_weights], history


def test_xla_step_with_taps_matches_the_default_step():
    teacher = dense_classifier(64, name="teacher")
    initial = dense_classifier(32, name="init").get_weights()
    reference, history = two_epochs_with_taps(teacher, initial, jit_compile=False)
    compiled, xla_history = two_epochs_with_taps(teacher, initial, jit_compile=True)
    assert len(reference) > len(initial)  # the connector is trained too
    starts = [np.zeros_like(w) for w in reference]
    assert relative_gap(compiled, reference, starts) <= 1e-5
    assert xla_history["distillation_loss"] == pytest.approx(history["distillation_loss"], rel=1e-5)


def test_xla_applies_consistent_augmentation_deterministically():
    # XLA draws Mixup's weights with another random-number algorithm than the
    # default step, so the two cannot be compared draw for draw: the
    # augmented XLA step must differ from the unaugmented one and repeat
    # itself exactly for the same seed.
    teacher = dense_classifier(64, name="teacher")
    initial = dense_classifier(32, name="init").get_weights()
    plain, _ = two_epochs_with_taps(teacher, initial, jit_compile=True)
    mixed, history = two_epochs_with_taps(teacher, initial, True, augment.Mixup(seed=0))
    again, _ = two_epochs_with_taps(teacher, initial, True, augment.Mixup(seed=0))
    starts = [np.zeros_like(w) for w in plain]
    assert relative_gap(mixed, plain, starts) > 1e-3
    for a, b in zip(mixed, again):
        np.testing.assert_array_equal(a, b)
    assert np.isfinite(history["loss"]).all()


def test_xla_refuses_an_augmentation_it_cannot_compile():
    distiller = keras_kd.Distiller(dense_classifier(16), dense_classifier(4),
                                   augmentation=augment.Mixup(alpha=0.4))
    with pytest.raises(ValueError, match=r"jit_compile=True, but the augmentation .* cannot be "
                                         r"compiled with XLA .* Use Mixup\(alpha=1.0\)"):
        distiller.compile(optimizer="adam", loss=sparse_ce(), jit_compile=True)
