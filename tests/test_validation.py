"""Argument checks shared by every module: what they refuse, and the line they give."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_kd
from keras_kd import _validation, lm
from keras_kd.losses.logits import MLKD, log_softmax_at
from tests.helpers import dense_classifier, numpy_log_softmax, toy_data


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


def compiled(loss=None, teacher=None, student=None):
    distiller = keras_kd.Distiller(teacher or dense_classifier(16, name="t"), student or dense_classifier(4, name="s"))
    distiller.compile("sgd", loss or keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return distiller


def test_ragged_inputs_to_a_dense_student_get_one_line_before_the_first_step():
    x = tf.ragged.constant([[1.0] * 8, [2.0] * 7])
    message = (r"^The inputs are ragged \(rows of different lengths, e.g. \(2, None\)\), but the student 's' takes "
               r"dense inputs of shape \(None, 8\)\. Pad the rows to one length first, e.g. x.to_tensor\(\)")
    for data in ((x, np.array([0, 1])), (tf.data.Dataset.from_tensor_slices((x, np.array([0, 1]))).batch(2),)):
        with pytest.raises(ValueError, match=message.replace(r"\(2, None\)", r"\((2|None), None\)")):
            compiled().fit(*data, epochs=1, verbose=0)


@pytest.mark.parametrize("labels, loss, message", [
    (np.array(["cat", "dog"] * 32), None,
     r"^The labels `y` are strings \(e.g. 'cat'\), but the hard-label loss needs class ids .*; the inputs are not "
     r"the problem. Map the labels to ids first"),
    ("one-hot", None,
     r"^The labels have shape \(64, 3\): one-hot rows of 3 classes, but the loss 'sparse_categorical_crossentropy' "
     r"takes class ids of shape \(samples,\)\. Pass y.argmax\(-1\)"),
    ("ids", keras.losses.CategoricalCrossentropy(from_logits=True),
     r"^The labels have shape \(64,\): class ids, but the loss 'categorical_crossentropy' takes one-hot rows of "
     r"shape \(samples, 3\)\. Compile with keras.losses.SparseCategoricalCrossentropy"),
])
def test_labels_the_loss_cannot_read_are_named_as_labels_with_the_clis_hint(labels, loss, message):
    x, y = toy_data()
    labels = {"one-hot": keras.utils.to_categorical(y, 3), "ids": y}.get(labels, labels) \
        if isinstance(labels, str) else labels
    for data in ((x, labels), (tf.data.Dataset.from_tensor_slices((x, labels)).batch(16),)):
        if len(data) == 1:  # a dataset: its element spec has no batch size and no values
            message = message.replace("64", "None").replace(r" \(e.g. 'cat'\)", "")
        with pytest.raises(ValueError, match=message):
            compiled(loss).fit(*data, epochs=1, verbose=0)


def test_validation_data_without_labels_is_refused_when_training_has_them():
    x, y = toy_data()
    with pytest.raises(ValueError, match=r"^validation_data holds inputs only \(ndarray, no labels\), but the training "
                                         r"data has labels: the validation hard-label loss and metrics would be left "
                                         r"out without a word. Pass validation_data=\(x_val, y_val\)"):
        compiled().fit(x, y, validation_data=x[:8], epochs=1, verbose=0)
    compiled().fit(x, y, validation_data=(x[:8], y[:8]), epochs=1, verbose=0)


def test_an_unbuilt_teacher_is_warned_about_it_would_teach_random_outputs():
    unbuilt = keras.Sequential([keras.layers.Dense(16), keras.layers.Dense(3)], name="fresh")
    with pytest.warns(UserWarning, match=r"^The teacher 'fresh' is not built: it has no weights yet, so it was never "
                                         r"trained or loaded, and it would teach the random outputs of its first call"):
        keras_kd.Distiller(unbuilt, dense_classifier(4, name="s"))  # keras.distillation accepts it: a warning


def test_texts_holding_none_or_numbers_name_the_index():
    with pytest.raises(ValueError, match=r"^The texts hold NoneType None at index 2 \(of 3\), but every item must be a "
                                         r"string: the student's preprocessor tokenizes text"):
        lm.check_text_items(["def f", "class A", None])
    with pytest.raises(ValueError, match=r"^The texts hold int 7 at index 0"):
        lm.check_text_items([7, "x"])
    assert lm.holds_text([None, "x"]) and not lm.holds_text(np.zeros(3))
    with pytest.raises(ValueError, match=r"received a list holding float at index 1 \(1.5\)"):
        _validation.check_texts(["a", 1.5], "prompts")
