"""The Distiller: one forward per model, a frozen teacher, the right objective."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_kd
from tests.helpers import dense_classifier, numpy_kl, sparse_ce, toy_data


class CallCounter(keras.layers.Layer):
    """Identity layer that counts how many times it runs."""

    def build(self, input_shape):
        self.calls = self.add_weight(
            shape=(), initializer="zeros", trainable=False, name="calls"
        )

    def call(self, inputs):
        self.calls.assign_add(1.0)
        return inputs


def counted_classifier(width, name):
    inputs = keras.Input((8,))
    counter = CallCounter(name="counter")
    hidden = keras.layers.Dense(width, activation="relu", name="hidden")(
        counter(inputs)
    )
    return keras.Model(inputs, keras.layers.Dense(3, name="logits")(hidden), name=name), counter


def compiled(distiller, optimizer="adam", **kwargs):
    distiller.compile(optimizer=optimizer, loss=sparse_ce(), **kwargs)
    return distiller


def numpy_sparse_ce(logits, labels):
    z = logits - logits.max(axis=-1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return -log_p[np.arange(len(labels)), labels]


# ----------------------------------------------------------- one training step


def test_each_model_runs_exactly_once_per_training_step():
    teacher, teacher_counter = counted_classifier(16, "teacher")
    student, student_counter = counted_classifier(4, "student")
    distiller = compiled(keras_kd.Distiller(teacher, student))
    x, y = toy_data(32)
    distiller.fit(x, y, batch_size=32, epochs=1, verbose=0)
    assert float(teacher_counter.calls) == 1.0
    assert float(student_counter.calls) == 1.0


def test_teacher_is_bit_identical_after_fit_and_evaluate():
    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(16)(inputs)
    hidden = keras.layers.BatchNormalization()(hidden)
    hidden = keras.layers.Dropout(0.5)(keras.layers.ReLU()(hidden))
    teacher = keras.Model(inputs, keras.layers.Dense(3)(hidden))
    before = [w.numpy().copy() for w in teacher.weights]
    distiller = compiled(keras_kd.Distiller(teacher, dense_classifier(4)))
    x, y = toy_data(64)
    distiller.fit(x, y, batch_size=16, epochs=2, verbose=0)
    distiller.evaluate(x, y, verbose=0)
    after = [w.numpy() for w in teacher.weights]
    assert len(before) == 8  # 2 Dense x (kernel, bias) + BN gamma, beta, mean, var
    assert all(np.array_equal(a, b) for a, b in zip(before, after))


def test_evaluate_runs_the_student_in_inference_mode():
    inputs = keras.Input((8,))
    hidden = keras.layers.BatchNormalization(name="bn")(keras.layers.Dense(4)(inputs))
    student = keras.Model(inputs, keras.layers.Dense(3)(hidden))
    distiller = compiled(keras_kd.Distiller(dense_classifier(16), student))
    x, y = toy_data(64)
    stats = [w.numpy().copy() for w in student.get_layer("bn").non_trainable_weights]
    distiller.evaluate(x, y, verbose=0)
    assert all(
        np.array_equal(a, b.numpy())
        for a, b in zip(stats, student.get_layer("bn").non_trainable_weights)
    )
    distiller.fit(x, y, epochs=1, verbose=0)  # and fit does move them
    assert not np.array_equal(stats[0], student.get_layer("bn").non_trainable_weights[0])


def test_gradients_reach_the_student_only():
    teacher, student = dense_classifier(16), dense_classifier(4)
    distiller = compiled(keras_kd.Distiller(teacher, student))
    assert {id(v) for v in distiller.trainable_variables} == {
        id(v) for v in student.trainable_variables
    }


# -------------------------------------------------------------- the objective


def test_evaluate_reports_each_term_and_their_weighted_sum():
    teacher = dense_classifier(16)
    student = dense_classifier(4, kernel_regularizer=keras.regularizers.L2(0.1))
    distiller = compiled(
        keras_kd.Distiller(
            teacher, student, keras_kd.LogitsDistillation(temperature=2.0),
            student_loss_weight=0.3,
        )
    )
    x, y = toy_data(40)
    w = np.linspace(0.0, 3.0, 40).astype("float32")
    logs = distiller.evaluate(x, y, sample_weight=w, batch_size=40, verbose=0, return_dict=True)

    student_logits = student.predict(x, verbose=0)
    teacher_logits = teacher.predict(x, verbose=0)
    hard = np.sum(w * numpy_sparse_ce(student_logits, y)) / 40  # Keras's reduction
    soft = float(numpy_kl(teacher_logits, student_logits, 2.0))
    regularization = sum(
        0.1 * np.sum(layer.kernel.numpy() ** 2) for layer in student.layers[1:]
    )
    assert logs["student_loss"] == pytest.approx(hard, rel=1e-5)
    assert logs["distillation_loss"] == pytest.approx(soft, rel=1e-5)
    assert logs["loss"] == pytest.approx(
        0.3 * hard + 0.7 * soft + regularization, rel=1e-5
    )


def test_sample_weights_change_the_hard_label_loss():
    distiller = compiled(keras_kd.Distiller(dense_classifier(16), dense_classifier(4)))
    x, y = toy_data(40)
    unweighted = distiller.evaluate(x, y, batch_size=40, verbose=0, return_dict=True)
    halves = np.r_[np.zeros(20), np.ones(20)].astype("float32")
    weighted = distiller.evaluate(
        x, y, sample_weight=halves, batch_size=40, verbose=0, return_dict=True
    )
    per_sample = numpy_sparse_ce(distiller.student.predict(x, verbose=0), y)
    assert unweighted["student_loss"] == pytest.approx(per_sample.mean(), rel=1e-5)
    assert weighted["student_loss"] == pytest.approx(per_sample[20:].sum() / 40, rel=1e-5)


def test_several_terms_are_logged_under_their_own_names():
    distiller = compiled(
        keras_kd.Distiller(
            dense_classifier(16), dense_classifier(4),
            [keras_kd.LogitsDistillation(4.0), keras_kd.LogitsDistillation(1.0, loss="mse")],
            distillation_loss_weights=[1.0, 0.5],
        ),
        metrics=["accuracy"],
    )
    x, y = toy_data(32)
    logs = distiller.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)
    assert set(logs) == {
        "loss", "total_loss", "student_loss", "distillation_loss", "accuracy", "teacher_agreement",
        "logits_distillation", "logits_distillation_1",
    }
    assert logs["distillation_loss"] == pytest.approx(
        logs["logits_distillation"] + 0.5 * logs["logits_distillation_1"], rel=1e-5
    )


def test_teacher_agreement_is_the_share_of_matching_top_classes():
    teacher, student = dense_classifier(16), dense_classifier(4)
    distiller = compiled(keras_kd.Distiller(teacher, student))
    x, y = toy_data(40)
    logs = distiller.evaluate(x, y, batch_size=40, verbose=0, return_dict=True)
    same = teacher.predict(x, verbose=0).argmax(1) == student.predict(x, verbose=0).argmax(1)
    assert 0 < same.mean() < 1
    assert logs["teacher_agreement"] == pytest.approx(same.mean())


def test_unlabelled_data_trains_the_student_from_the_teacher_alone():
    student = dense_classifier(4)
    distiller = keras_kd.Distiller(dense_classifier(16), student, student_loss_weight=0.0)
    distiller.compile(optimizer="adam")
    before = student.get_weights()
    x, _ = toy_data(64)
    logs = distiller.fit(tf.data.Dataset.from_tensor_slices(x).batch(16), epochs=2, verbose=0)
    assert logs.history["distillation_loss"][1] < logs.history["distillation_loss"][0]
    assert not all(np.array_equal(a, b) for a, b in zip(before, student.get_weights()))


def test_unlabelled_data_with_a_student_loss_weight_is_refused():
    distiller = compiled(keras_kd.Distiller(dense_classifier(16), dense_classifier(4)))
    x, _ = toy_data(16)
    with pytest.raises(ValueError, match=r"The data has no labels, but student_loss_weight=0.5 > 0"):
        distiller.fit(tf.data.Dataset.from_tensor_slices(x).batch(8), epochs=1, verbose=0)


def test_softmax_outputs_are_distilled_from_log_probabilities():
    logits_teacher = dense_classifier(16)
    inputs = keras.Input((8,))
    softmax_teacher = keras.Model(inputs, keras.layers.Softmax()(logits_teacher(inputs)))
    student = dense_classifier(4)
    x, y = toy_data(32)
    losses = []
    for teacher in (logits_teacher, softmax_teacher):
        distiller = compiled(keras_kd.Distiller(teacher, student, keras_kd.LogitsDistillation(2.0)))
        losses.append(distiller.evaluate(x, y, batch_size=32, verbose=0, return_dict=True))
    assert losses[1]["distillation_loss"] == pytest.approx(losses[0]["distillation_loss"], rel=1e-5)


# ------------------------------------------------------ schedulable variables


def test_weights_and_temperature_are_variables_a_callback_can_change():
    x, y = toy_data(32)
    teacher, student = dense_classifier(16), dense_classifier(4)
    loss = keras_kd.LogitsDistillation(temperature=4.0)
    distiller = compiled(
        keras_kd.Distiller(teacher, student, loss, student_loss_weight=0.5),
        optimizer=keras.optimizers.SGD(0.0),  # nothing moves but the knobs
    )

    class Anneal(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            loss.temperature.assign(1.0)
            distiller.student_loss_weight.assign(0.0)

    history = distiller.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[Anneal()]).history
    t, s = teacher.predict(x, verbose=0), student.predict(x, verbose=0)
    kl4, kl1 = float(numpy_kl(t, s, 4.0)), float(numpy_kl(t, s, 1.0))
    hard = numpy_sparse_ce(s, y).mean()
    assert history["distillation_loss"] == pytest.approx([kl4, kl1], rel=1e-5)
    assert history["loss"] == pytest.approx([0.5 * hard + 0.5 * kl4, kl1], rel=1e-5)
    assert isinstance(distiller.distillation_loss_weights[0], keras.Variable)


# -------------------------------------------------------------------- saving


def test_saved_distiller_evaluates_and_continues_with_optimizer_state(tmp_path):
    x, y = toy_data(64)
    distiller = compiled(
        keras_kd.Distiller(
            dense_classifier(16), dense_classifier(4),
            keras_kd.LogitsDistillation(temperature=4.0), student_loss_weight=0.2,
        ),
        metrics=["accuracy"],
    )
    distiller.fit(x, y, batch_size=16, epochs=2, verbose=0)
    distiller.distillation_losses[0].temperature.assign(2.5)
    distiller.save(tmp_path / "d.keras")
    loaded = keras.models.load_model(tmp_path / "d.keras")

    assert isinstance(loaded, keras_kd.Distiller)
    assert float(loaded.distillation_losses[0].temperature) == 2.5
    assert float(loaded.student_loss_weight) == pytest.approx(0.2)
    assert loaded.evaluate(x, y, verbose=0, return_dict=True) == pytest.approx(
        distiller.evaluate(x, y, verbose=0, return_dict=True)
    )
    assert all(
        np.array_equal(a.numpy(), b.numpy())
        for a, b in zip(distiller.optimizer.variables, loaded.optimizer.variables)
    )
    assert int(loaded.optimizer.iterations) == 8
    loaded.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert int(loaded.optimizer.iterations) == 12


def test_backup_and_restore_resumes_to_the_uninterrupted_weights(tmp_path):
    x, y = toy_data(64)

    def fresh():
        keras.utils.set_random_seed(1)
        return compiled(keras_kd.Distiller(dense_classifier(16), dense_classifier(4)))

    reference = fresh()
    reference.fit(x, y, batch_size=16, epochs=4, shuffle=False, verbose=0)

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                raise RuntimeError("interrupted")

    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    with pytest.raises(RuntimeError, match="interrupted"):
        fresh().fit(x, y, batch_size=16, epochs=4, shuffle=False, verbose=0,
                    callbacks=[backup, Interrupt()])
    resumed = fresh()
    resumed.fit(x, y, batch_size=16, epochs=4, shuffle=False, verbose=0, callbacks=[backup])
    assert int(resumed.optimizer.iterations) == 16
    assert all(
        np.array_equal(a, b)
        for a, b in zip(reference.student.get_weights(), resumed.student.get_weights())
    )


def test_student_saves_alone(tmp_path):
    teacher, student = dense_classifier(16), dense_classifier(4)
    distiller = compiled(keras_kd.Distiller(teacher, student))
    x, y = toy_data(32)
    distiller.fit(x, y, epochs=1, verbose=0)
    distiller.student.save(tmp_path / "student.keras")
    loaded = keras.models.load_model(tmp_path / "student.keras")
    assert not isinstance(loaded, keras_kd.Distiller)
    assert len(loaded.weights) == len(student.weights)
    assert loaded.count_params() == student.count_params() < teacher.count_params()
    np.testing.assert_allclose(loaded.predict(x, verbose=0), distiller.predict(x, verbose=0))


# --------------------------------------------------------------- drop-in


def test_a_keras_distillation_program_runs_unchanged():
    # The keras.distillation docstring example, import switched to keras_kd.
    from keras_kd import Distiller, LogitsDistillation

    inputs = keras.Input((8,))
    teacher = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(inputs))
    student = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3, activation="softmax")])
    distiller = Distiller(
        teacher=teacher, student=student,
        distillation_losses=LogitsDistillation(temperature=3.0),
    )
    distiller.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    x, y = toy_data(32)
    history = distiller.fit(x, y, epochs=2, verbose=0).history
    assert set(history) >= {"loss", "total_loss", "student_loss", "distillation_loss", "accuracy"}
    assert distiller.predict(x, verbose=0).shape == (32, 3)

    def logits(model):  # the input of each model's softmax
        dense = model.layers[-1]
        return x @ dense.kernel.numpy() + dense.bias.numpy()

    logs = distiller.evaluate(x, y, verbose=0, return_dict=True)
    assert logs["distillation_loss"] == pytest.approx(numpy_kl(logits(teacher), logits(student), 3.0), rel=1e-4)


# ------------------------------------------------------------------- errors


def frozen(model):
    model.trainable = False
    return model


def sharing_a_layer():
    shared = keras.layers.Dense(16, activation="relu", name="shared")
    models = []
    for name in ("teacher", "student"):
        inputs = keras.Input((8,))
        models.append(keras.Model(inputs, keras.layers.Dense(3)(shared(inputs)), name=name))
    return models


class ReturnsPerSample(keras_kd.DistillationLoss):
    def compute_loss(self, teacher_outputs, student_outputs, **kwargs):
        return keras.ops.sum(teacher_outputs - student_outputs, axis=-1)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: keras_kd.Distiller("teacher.keras", dense_classifier(4)),
         r"`teacher` must be a keras.Model, but received str"),
        (lambda: keras_kd.Distiller(dense_classifier(16), keras.layers.Dense(3)),
         r"`student` must be a keras.Model, but received Dense"),
        (lambda: keras_kd.Distiller(dense_classifier(16), dense_classifier(4, classes=5)),
         r"the teacher outputs 3 classes \(shape \(None, 3\)\) and the student 5 .*"
         r"Give the student a final layer with 3 units"),
        (lambda: keras_kd.Distiller(dense_classifier(16), dense_classifier(4, features=6)),
         r"teacher takes inputs of shape \[\(8,\)\] and the student \[\(6,\)\]"),
        (lambda: keras_kd.Distiller(dense_classifier(16), dense_classifier(4), student_loss_weight=1.5),
         r"`student_loss_weight` must be in \[0.0, 1.0\], but received 1.5"),
        (lambda: keras_kd.Distiller(dense_classifier(16), dense_classifier(4),
                                    [keras_kd.LogitsDistillation()], [1.0, 0.5]),
         r"`distillation_loss_weights` has 2 entries but there are 1 distillation losses"),
        (lambda: keras_kd.Distiller(dense_classifier(16), dense_classifier(4), ReturnsPerSample()),
         r"'returns_per_sample' \(ReturnsPerSample\) returned a tensor of shape \(None,\), "
         r"but compute_loss\(\) must return a scalar"),
        (lambda: keras_kd.Distiller(dense_classifier(16), dense_classifier(4), [keras.losses.KLDivergence()]),
         r"must have a compute_loss\(\) method .* received KLDivergence"),
        (lambda: keras_kd.Distiller(dense_classifier(16), dense_classifier(4), []),
         r"`distillation_losses` is an empty list"),
        (lambda: keras_kd.Distiller(dense_classifier(16), dense_classifier(4),
                                    keras_kd.LogitsDistillation(temperature=0)),
         r"`temperature` must be > 0.0, but received 0"),
        (lambda: keras_kd.Distiller(dense_classifier(16), dense_classifier(4),
                                    keras_kd.LogitsDistillation(temperature=float("inf"))),
         r"`temperature` must be a finite number, but received inf"),
        (lambda: keras_kd.Distiller(dense_classifier(16), dense_classifier(4),
                                    distillation_loss_weights=[float("inf")]),
         r"`distillation_loss_weights\[0\]` must be a finite number, but received inf"),
        (lambda: keras_kd.Distiller(dense_classifier(16), dense_classifier(4),
                                    student_loss_weight=float("nan")),
         r"`student_loss_weight` must be a finite number, but received nan"),
        (lambda: keras_kd.Distiller(*[dense_classifier(16)] * 2),
         r"The teacher and the student are the same model .* the teacher is frozen, so nothing "
         r"would train. Pass a separate student"),
        (lambda: keras_kd.Distiller(dense_classifier(16), frozen(dense_classifier(4))),
         r"The student 'functional.*' has no trainable weights \(student.trainable is False; 4 "
         r"weights in all\).* Set student.trainable = True"),
        (lambda: keras_kd.Distiller(*sharing_a_layer()),
         r"The student 'student' shares 2 weights with the teacher 'teacher' \(e.g. "
         r"\['shared/kernel', 'shared/bias'\]\).* Build the student from its own layers"),
    ],
)
def test_bad_construction_is_refused_with_what_and_how(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_compile_without_a_student_loss_is_refused_while_it_is_weighted():
    distiller = keras_kd.Distiller(dense_classifier(16), dense_classifier(4))
    with pytest.raises(ValueError, match=r"received loss=None, but student_loss_weight=0.5 > 0"):
        distiller.compile(optimizer="adam")
