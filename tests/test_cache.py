"""Teacher-output cache: the teacher never runs in fit, and stale caches are redone."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_kd
from keras_kd import augment
from tests.helpers import dense_classifier, sparse_ce, toy_data
from tests.test_distiller import counted_classifier


def dataset(n=64, batch=16, seed=0):
    x, y = toy_data(n, seed=seed)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)


def make(teacher, losses=None, **kwargs):
    student = dense_classifier(4, name="student")
    student.set_weights(dense_classifier(4, name="init").get_weights())
    distiller = keras_kd.Distiller(teacher, student, losses, **kwargs)
    distiller.compile(optimizer=keras.optimizers.SGD(0.1), loss=sparse_ce(), metrics=["accuracy"])
    return distiller


def test_fit_on_the_cache_never_runs_the_teacher_and_matches_uncached_training():
    teacher, counter = counted_classifier(16, "teacher")
    losses = [keras_kd.LogitsDistillation(),
              keras_kd.FeatureDistillation(teacher_layer_name="hidden", student_layer_name="hidden",
                                           projection="auto")]
    keras.utils.set_random_seed(3)
    cached_distiller = make(teacher, losses)
    cached = keras_kd.cache_teacher_outputs(cached_distiller, dataset(), shuffle=False)
    counter.calls.assign(0.0)
    cached_logs = cached_distiller.fit(cached, epochs=2, verbose=0).history
    assert float(counter.calls) == 0.0
    evaluated = cached_distiller.evaluate(cached, verbose=0, return_dict=True)
    assert float(counter.calls) == 0.0

    keras.utils.set_random_seed(3)
    plain_distiller = make(teacher, [keras_kd.LogitsDistillation(),
                                     keras_kd.FeatureDistillation(teacher_layer_name="hidden",
                                                                  student_layer_name="hidden",
                                                                  projection="auto")])
    plain_logs = plain_distiller.fit(dataset(), epochs=2, verbose=0).history
    assert float(counter.calls) == 8.0  # 4 batches x 2 epochs, once each
    for a, b in zip(cached_distiller.student.get_weights(), plain_distiller.student.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert cached_logs["loss"] == pytest.approx(plain_logs["loss"], rel=1e-5)
    assert evaluated == pytest.approx(plain_distiller.evaluate(dataset(), verbose=0, return_dict=True),
                                      rel=1e-5)


def test_disk_cache_is_reused_and_redone_when_teacher_or_data_change(tmp_path):
    teacher, counter = counted_classifier(16, "teacher")
    distiller = make(teacher)
    keras_kd.cache_teacher_outputs(distiller, dataset(), path=str(tmp_path / "c"))
    assert float(counter.calls) > 0
    counter.calls.assign(0.0)
    again = keras_kd.cache_teacher_outputs(distiller, dataset(), path=str(tmp_path / "c"))
    assert float(counter.calls) == 0.0  # reused
    assert sum(1 for _ in again) == 4

    teacher.get_layer("logits").bias.assign(teacher.get_layer("logits").bias + 1.0)
    with pytest.warns(UserWarning, match="The teacher or the data changed"):
        keras_kd.cache_teacher_outputs(distiller, dataset(), path=str(tmp_path / "c"))
    assert float(counter.calls) > 0
    counter.calls.assign(0.0)
    with pytest.warns(UserWarning, match="The teacher or the data changed"):
        keras_kd.cache_teacher_outputs(distiller, dataset(seed=9), path=str(tmp_path / "c"))
    assert float(counter.calls) > 0


def test_unlabelled_and_unbatched_data_and_an_ensemble():
    teachers = [dense_classifier(16, name="a"), dense_classifier(8, name="b")]
    distiller = make(teachers, student_loss_weight=0.0)
    x, _ = toy_data(40)
    cached = keras_kd.cache_teacher_outputs(distiller, tf.data.Dataset.from_tensor_slices(x), batch_size=8)
    assert np.isfinite(distiller.fit(cached, epochs=1, verbose=0).history["loss"]).all()


def test_refusals():
    teacher = dense_classifier(16, name="teacher")
    with_features = make(teacher, [keras_kd.FeatureDistillation(teacher_layer_name="hidden",
                                                                student_layer_name="hidden",
                                                                projection="auto")])
    logits_only = keras_kd.cache_teacher_outputs(teacher, dataset())
    with pytest.raises(ValueError, match=r"The cached teacher outputs hold \['logits', 'output'\], "
                                         r"but this Distiller's losses read \['hidden', 'logits', 'output'\]"):
        with_features.fit(logits_only, epochs=1, verbose=0)
    augmented = make(teacher, augmentation=augment.Mixup())
    with pytest.raises(ValueError, match=r"cached teacher outputs, which describe the inputs before "
                                         r"augmentation"):
        augmented.fit(keras_kd.cache_teacher_outputs(augmented, dataset()), epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"needs a finite data set"):
        keras_kd.cache_teacher_outputs(teacher, dataset().repeat())
    with pytest.raises(ValueError, match=r"takes a tf.data.Dataset, but received ndarray"):
        keras_kd.cache_teacher_outputs(teacher, toy_data(8)[0])
