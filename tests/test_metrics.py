"""Fidelity metrics against NumPy, alone and logged by the Distiller."""

import keras
import numpy as np
import pytest

import keras_kd
from keras_kd import metrics
from tests.helpers import dense_classifier, numpy_kl, numpy_log_softmax, sparse_ce, toy_data
from tests.test_distiller import counted_classifier

RNG = np.random.default_rng(17)


def numpy_ece(logits, labels, mask=None, bins=15):
    """Guo et al.'s ECE, written bin by bin: sum_m |B_m|/n |acc(B_m) - conf(B_m)|."""
    probabilities = np.exp(numpy_log_softmax(logits)).reshape(-1, np.shape(logits)[-1])
    labels = np.asarray(labels).reshape(-1)
    keep = np.ones(len(labels), bool) if mask is None else np.asarray(mask).reshape(-1) > 0
    confidence = probabilities.max(-1)[keep]
    correct = (probabilities.argmax(-1) == labels)[keep]
    ece = 0.0
    for m in range(1, bins + 1):
        in_bin = (confidence > (m - 1) / bins) & (confidence <= m / bins)
        if in_bin.any():
            ece += in_bin.sum() / len(confidence) * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return ece


def updated(metric, *batches):
    metric.reset_state()
    for batch in batches:
        metric.update_state(*(None if v is None else keras.ops.array(v) for v in batch))
    return float(metric.result())


def test_teacher_kl_streams_the_mean_over_batches():
    t1, s1 = RNG.normal(size=(5, 4)) * 3, RNG.normal(size=(5, 4))
    t2, s2 = RNG.normal(size=(3, 4)) * 3, RNG.normal(size=(3, 4))
    expected = numpy_kl(np.concatenate([t1, t2]), np.concatenate([s1, s2]))
    assert updated(metrics.TeacherKL(), (t1, s1), (t2, s2)) == pytest.approx(expected, rel=1e-5)


def test_ece_accumulates_bins_over_batches_not_a_mean_of_batch_eces():
    logits = RNG.normal(size=(40, 5)) * 2
    labels = np.where(RNG.uniform(size=40) < 0.6, logits.argmax(-1), RNG.integers(0, 5, 40))
    metric = metrics.CalibrationError()
    got = updated(metric, (labels[:13], logits[:13]), (labels[13:], logits[13:]))
    assert got == pytest.approx(numpy_ece(logits, labels), abs=1e-6)
    assert got != pytest.approx(
        (numpy_ece(logits[:13], labels[:13]) + numpy_ece(logits[13:], labels[13:])) / 2, abs=1e-4
    )
    one_hot = np.eye(5)[labels]
    assert updated(metric, (one_hot, logits)) == pytest.approx(got, abs=1e-6)


def test_masked_token_level_values_count_real_tokens_only():
    logits_t = RNG.normal(size=(2, 6, 9)) * 3
    logits_s = RNG.normal(size=(2, 6, 9))
    labels = RNG.integers(0, 9, size=(2, 6))
    mask = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]], "float32")
    assert updated(metrics.TeacherKL(), (logits_t, logits_s, mask)) == pytest.approx(
        numpy_kl(logits_t, logits_s, mask=mask), rel=1e-5
    )
    assert updated(metrics.CalibrationError(), (labels, logits_s, mask)) == pytest.approx(
        numpy_ece(logits_s, labels, mask), abs=1e-6
    )
    # Padding changes nothing.
    padded = logits_s.copy()
    padded[mask == 0] = 50.0
    assert updated(metrics.CalibrationError(), (labels, padded, mask)) == pytest.approx(
        numpy_ece(logits_s, labels, mask), abs=1e-6
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [({"model": "teachers"}, r"`model` must be 'student' or 'teacher', but received 'teachers'"),
     ({"bins": 0}, r"`bins` must be a whole number >= 1, but received 0. Pass e.g. bins=15"),
     ({"bins": 15.0}, r"`bins` must be a whole number >= 1, but received 15.0")],
)
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        metrics.CalibrationError(**kwargs)


def test_numpy_whole_numbers_are_accepted_as_bins():
    assert metrics.CalibrationError(bins=np.int64(10)).bins == 10


def test_calibration_error_round_trip():
    metric = metrics.CalibrationError("teacher", bins=10)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(metric))
    assert (restored.model, restored.bins, restored.name) == ("teacher", 10, "teacher_ece")


# -------------------------------------------------------------- in the Distiller


def distiller_with_fidelity(student_loss_weight=0.5):
    keras.utils.set_random_seed(5)
    teacher, student = dense_classifier(16, name="teacher"), dense_classifier(4, name="student")
    distiller = keras_kd.Distiller(teacher, student, student_loss_weight=student_loss_weight)
    distiller.compile("sgd", loss=sparse_ce() if student_loss_weight else None,
                      metrics=["accuracy", "teacher_kl", "student_ece",
                               metrics.CalibrationError("teacher")])
    return distiller, teacher, student


def test_fidelity_metrics_in_weighted_metrics_are_refused_at_compile():
    distiller = keras_kd.Distiller(dense_classifier(16, name="teacher"), dense_classifier(4, name="student"))
    with pytest.raises(ValueError, match=r"`weighted_metrics` received the fidelity metrics \['teacher_kl'\].*"
                                         r"Pass them in `metrics=` instead"):
        distiller.compile("sgd", loss=sparse_ce(), weighted_metrics=["accuracy", "teacher_kl"])


def test_distiller_logs_the_fidelity_metrics_against_numpy():
    distiller, teacher, student = distiller_with_fidelity()
    x, y = toy_data(48)
    logs = distiller.evaluate(x, y, batch_size=16, return_dict=True, verbose=0)
    t = keras.ops.convert_to_numpy(teacher(x))
    s = keras.ops.convert_to_numpy(student(x))
    assert logs["teacher_kl"] == pytest.approx(numpy_kl(t, s), rel=1e-5)
    assert logs["student_ece"] == pytest.approx(numpy_ece(s, y), abs=1e-6)
    assert logs["teacher_ece"] == pytest.approx(numpy_ece(t, y), abs=1e-6)
    history = distiller.fit(x, y, validation_data=(x, y), epochs=1, verbose=0).history
    assert {"teacher_kl", "student_ece", "teacher_ece", "val_teacher_kl",
            "val_student_ece", "val_teacher_ece"} <= set(history)


def test_without_labels_ece_is_left_out_not_shown_as_zero():
    distiller, _, _ = distiller_with_fidelity(student_loss_weight=0.0)
    x, _ = toy_data(32)
    history = distiller.fit(x, epochs=1, verbose=0).history
    assert "teacher_kl" in history
    assert not {"student_ece", "teacher_ece"} & set(history)


def test_fidelity_metrics_survive_saving(tmp_path):
    distiller, _, _ = distiller_with_fidelity()
    x, y = toy_data(32)
    distiller.save(tmp_path / "d.keras")
    loaded = keras.saving.load_model(tmp_path / "d.keras")
    assert distiller.evaluate(x, y, return_dict=True, verbose=0) == pytest.approx(
        loaded.evaluate(x, y, return_dict=True, verbose=0)
    )


def test_fidelity_metrics_add_no_forward_pass():
    teacher, teacher_counter = counted_classifier(16, "teacher")
    student, student_counter = counted_classifier(4, "student")
    distiller = keras_kd.Distiller(teacher, student)
    distiller.compile("adam", loss=sparse_ce(), metrics=["teacher_kl", "student_ece", "teacher_ece"])
    x, y = toy_data(32)
    distiller.fit(x, y, batch_size=32, epochs=1, verbose=0)
    assert float(teacher_counter.calls) == 1.0 and float(student_counter.calls) == 1.0


def token_model(name, width, vocabulary=7):
    keras.utils.set_random_seed(width)
    tokens = keras.Input((6,), dtype="int32")
    hidden = keras.layers.Embedding(
        vocabulary, width, embeddings_initializer=keras.initializers.RandomNormal(stddev=2.0)
    )(tokens)
    return keras.Model(tokens, keras.layers.Dense(vocabulary)(hidden), name=name)


def test_token_level_distiller_masks_padding_out_of_the_metrics():
    teacher, student = token_model("teacher", 16), token_model("student", 4)
    distiller = keras_kd.Distiller(teacher, student, student_loss_weight=0.5)
    distiller.compile("sgd", loss=sparse_ce(), metrics=["teacher_kl", "student_ece", "teacher_ece"])
    x = RNG.integers(0, 7, size=(4, 6)).astype("int32")
    y = RNG.integers(0, 7, size=(4, 6))
    mask = np.array([[1] * 6, [1] * 3 + [0] * 3, [1] * 5 + [0], [1, 0, 0, 0, 0, 0]], "float32")
    logs = distiller.evaluate(x, y, sample_weight=mask, batch_size=4, return_dict=True, verbose=0)
    t = keras.ops.convert_to_numpy(teacher(x))
    s = keras.ops.convert_to_numpy(student(x))
    assert logs["teacher_kl"] == pytest.approx(numpy_kl(t, s, mask=mask), rel=1e-5)
    assert logs["student_ece"] == pytest.approx(numpy_ece(s, y, mask), abs=1e-6)
    assert logs["teacher_ece"] == pytest.approx(numpy_ece(t, y, mask), abs=1e-6)


def test_a_top_k_cache_holding_every_token_gives_the_same_metrics():
    import tensorflow as tf

    teacher, student = token_model("teacher", 16), token_model("student", 4)
    distiller = keras_kd.Distiller(teacher, student, keras_kd.LogitsDistillation(1.0))
    distiller.compile("sgd", loss=sparse_ce(), metrics=["teacher_kl", "student_ece", "teacher_ece"])
    x = RNG.integers(0, 7, size=(8, 6)).astype("int32")
    y = RNG.integers(0, 7, size=(8, 6))
    mask = (np.arange(6)[None, :] < RNG.integers(1, 7, size=(8, 1))).astype("float32")
    dataset = tf.data.Dataset.from_tensor_slices((x, y, mask)).batch(4)
    full = distiller.evaluate(dataset, verbose=0, return_dict=True)
    cached = keras_kd.cache_teacher_outputs(distiller, dataset, top_k=7, top_k_dtype="float32",
                                            shuffle=False)
    from_cache = distiller.evaluate(cached, verbose=0, return_dict=True)
    for name in ("teacher_kl", "student_ece", "teacher_ece"):
        assert from_cache[name] == pytest.approx(full[name], rel=1e-5, abs=1e-6), name


def test_compiling_again_without_them_stops_logging_them():
    distiller, _, _ = distiller_with_fidelity()
    x, y = toy_data(32)
    distiller.fit(x, y, epochs=1, verbose=0)
    distiller.compile("sgd", loss=sparse_ce(), metrics=["accuracy"])
    history = distiller.fit(x, y, epochs=1, verbose=0).history
    assert not {"teacher_kl", "student_ece", "teacher_ece"} & set(history)
    assert "accuracy" in history
