"""One step under MirroredStrategy (2 replicas) equals one step on one device."""

import keras
import numpy as np
import tensorflow as tf

import keras_kd
from tests.helpers import dense_classifier, sparse_ce, toy_data


def one_step(strategy, weights, losses=None, batch=16, metrics=("accuracy",)):
    """Builds a Distiller under `strategy`, runs one step, returns its state.

    `losses` may be a function that makes them, called under the strategy's
    scope (for losses that own variables)."""
    x, y = toy_data(batch, seed=3)
    sample_weight = np.linspace(0.0, 2.0, batch).astype("float32")
    dataset = tf.data.Dataset.from_tensor_slices((x, y, sample_weight)).batch(batch)
    with strategy.scope():
        teacher = dense_classifier(16, name="teacher")
        student = dense_classifier(
            4, name="student", kernel_regularizer=keras.regularizers.L2(0.01)
        )
        teacher.set_weights(weights["teacher"])
        student.set_weights(weights["student"])
        distiller = keras_kd.Distiller(
            teacher, student,
            (losses() if callable(losses) else losses) or keras_kd.LogitsDistillation(4.0),
            student_loss_weight=0.3,
        )
        distiller.compile(
            optimizer=keras.optimizers.SGD(0.5), loss=sparse_ce(),
            metrics=list(metrics),
        )
    logs = distiller.fit(dataset, epochs=1, verbose=0).history
    return [w.numpy() for w in student.weights], {k: v[0] for k, v in logs.items()}


def reference_weights():
    return {
        "teacher": dense_classifier(16, name="teacher").get_weights(),
        "student": dense_classifier(4, name="student").get_weights(),
    }


def test_two_replicas_update_and_log_exactly_as_one_device(two_replicas):
    strategy = two_replicas
    assert strategy.num_replicas_in_sync == 2
    weights = reference_weights()
    one_weights, one_logs = one_step(tf.distribute.get_strategy(), weights)
    two_weights, two_logs = one_step(strategy, weights)

    moved = max(np.abs(a - b).max() for a, b in zip(one_weights, weights["student"]))
    assert moved > 1e-2  # the step really moved the student
    assert max(np.abs(a - b).max() for a, b in zip(one_weights, two_weights)) <= 1e-6
    assert set(one_logs) == {
        "loss", "total_loss", "student_loss", "distillation_loss", "accuracy", "teacher_agreement"
    }
    for name in one_logs:
        assert abs(one_logs[name] - two_logs[name]) <= 1e-6, name


def test_two_replicas_agree_on_fidelity_metrics_and_the_learned_temperature(two_replicas):
    weights = reference_weights()

    def losses():
        return [keras_kd.LogitsDistillation(4.0), keras_kd.losses.CTKD(initial_temperature=3.0)]

    metrics = ["accuracy", "teacher_kl", "student_ece", "teacher_ece"]
    one_weights, one_logs = one_step(tf.distribute.get_strategy(), weights, losses, metrics=metrics)
    two_weights, two_logs = one_step(two_replicas, weights, losses, metrics=metrics)
    assert {"teacher_kl", "student_ece", "teacher_ece", "ctkd_temperature"} <= set(one_logs)
    assert one_logs["ctkd_temperature"] != 3.0  # the temperature was trained
    assert max(np.abs(a - b).max() for a, b in zip(one_weights, two_weights)) <= 1e-6
    for name in one_logs:
        assert abs(one_logs[name] - two_logs[name]) <= 1e-6, name
