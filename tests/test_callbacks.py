"""Schedules act inside the compiled step; TensorBoard shows every term."""

import keras
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import keras_kd
from keras_kd.callbacks import DistillationHistograms, DistillationScheduler
from tests.helpers import dense_classifier, numpy_kl, sparse_ce, toy_data


def distiller_with(losses, optimizer=None, **kwargs):
    teacher, student = dense_classifier(16, name="teacher"), dense_classifier(4, name="student")
    distiller = keras_kd.Distiller(teacher, student, losses, **kwargs)
    distiller.compile(optimizer=optimizer or keras.optimizers.SGD(0.0), loss=sparse_ce(),
                      metrics=["accuracy"])
    return distiller


def event_tensors(run_dir):
    """{tag: [value per step]} of a run's event files (TF2 summaries are tensors)."""
    events = EventAccumulator(str(run_dir), size_guidance={"tensors": 0})
    events.Reload()
    return {
        tag: [tf.make_ndarray(event.tensor_proto) for event in events.Tensors(tag)]
        for tag in events.Tags()["tensors"]
    }


def test_epoch_schedule_changes_the_compiled_loss_as_it_says():
    distiller = distiller_with(keras_kd.LogitsDistillation(temperature=1.0))
    schedule = keras.optimizers.schedules.PolynomialDecay(1.0, 2, 5.0)  # 1 -> 3 -> 5
    x, y = toy_data(32)
    history = distiller.fit(
        x, y, batch_size=32, epochs=3, verbose=0,
        callbacks=[DistillationScheduler({"temperature": schedule})],
    ).history
    t = distiller.teachers[0].predict(x, verbose=0)
    s = distiller.student.predict(x, verbose=0)
    expected = [float(numpy_kl(t, s, temperature)) for temperature in (1.0, 3.0, 5.0)]
    assert history["distillation_loss"] == pytest.approx(expected, rel=1e-5)
    assert history["temperature"] == pytest.approx([1.0, 3.0, 5.0])


def test_step_schedule_follows_the_optimizer_step():
    distiller = distiller_with(keras_kd.LogitsDistillation(), student_loss_weight=0.5)
    seen = []

    class Watch(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append((float(distiller.student_loss_weight), logs["student_loss_weight"]))

    ramp = lambda step: min(1.0, step / 4)  # noqa: E731
    x, y = toy_data(32)
    distiller.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[
        DistillationScheduler({"student_loss_weight": ramp}, per="step"), Watch()])
    assert [value for value, _ in seen] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0]
    assert [logged for _, logged in seen] == [value for value, _ in seen]


def test_fitnets_two_stage_moves_weight_from_hints_to_logits():
    distiller = distiller_with([
        keras_kd.LogitsDistillation(),
        keras_kd.FeatureDistillation(teacher_layer_name="hidden", student_layer_name="hidden",
                                     projection="auto"),
    ])
    stages = DistillationScheduler({
        "logits_distillation.weight": lambda epoch: 0.0 if epoch < 1 else 1.0,
        "distillation_loss_weights[1]": lambda epoch: 1.0 if epoch < 1 else 0.0,
    })
    x, y = toy_data(32)
    history = distiller.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[stages]).history
    hint, logits = history["feature_distillation"], history["logits_distillation"]
    assert history["distillation_loss"] == pytest.approx([hint[0], logits[1]], rel=1e-6)


def test_a_schedule_to_a_temperature_that_erases_the_teacher_is_refused():
    distiller = distiller_with([keras_kd.LogitsDistillation(temperature=2.0)])
    scheduler = DistillationScheduler({"temperature": lambda epoch: 2.0 if epoch < 1 else 1e9})
    x, y = toy_data()
    with pytest.raises(ValueError, match=r"`schedule of 'temperature' at epoch 1` is 1e\+09, above 1000: "
                                         r"softened that much"):
        distiller.fit(x, y, epochs=2, verbose=0, callbacks=[scheduler])
    assert float(distiller.schedulable_variables()["logits_distillation.temperature"]) == 2.0  # not assigned


def test_unknown_target_lists_the_valid_ones():
    distiller = distiller_with([keras_kd.LogitsDistillation(), keras_kd.losses.DKD()])
    x, y = toy_data(8)
    with pytest.raises(ValueError, match=r"target 'temperature' names nothing in this Distiller. "
                                         r"Valid targets: \['student_loss_weight', .*'dkd.alpha', 'dkd.beta', "
                                             r"'distillation_loss_weights\[0\]', 'distillation_loss_weights\[1\]'\]"):
        distiller.fit(x, y, epochs=1, verbose=0,
                      callbacks=[DistillationScheduler({"temperature": lambda e: 2.0})])


def test_tensorboard_shows_every_term_the_agreement_and_the_schedule(tmp_path):
    distiller = distiller_with(
        [keras_kd.LogitsDistillation(temperature=2.0),
         keras_kd.FeatureDistillation(teacher_layer_name="hidden", student_layer_name="hidden",
                                      projection="auto")],
        optimizer="adam",
    )
    x, y = toy_data(64)
    distiller.fit(
        x, y, batch_size=16, epochs=3, validation_data=(x, y), verbose=0,
        callbacks=[
            DistillationScheduler({"logits_distillation.temperature": lambda e: 4.0 - e}),
            keras.callbacks.TensorBoard(str(tmp_path), update_freq="batch"),
            DistillationHistograms(str(tmp_path), x[:32]),
        ],
    )
    train = event_tensors(tmp_path / "train")
    validation = event_tensors(tmp_path / "validation")
    terms = ["loss", "student_loss", "distillation_loss", "logits_distillation",
             "feature_distillation", "teacher_agreement", "accuracy"]
    for name in terms:
        assert f"epoch_{name}" in train and f"batch_{name}" in train, name
        assert f"epoch_{name}" in validation, name
    assert [float(v) for v in train["epoch_logits_distillation.temperature"]] == [4.0, 3.0, 2.0]
    for tag in ("logits_distillation/teacher_probabilities",
                "logits_distillation/student_probabilities",
                "feature_distillation/feature_error"):
        assert len(train[tag]) == 3 and train[tag][0].ndim == 2, tag  # histogram per epoch
