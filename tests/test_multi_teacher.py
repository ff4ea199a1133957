"""Several teachers: each runs once, logits mix as distributions, taps by name."""

import keras
import numpy as np
import pytest

import keras_kd
from tests.helpers import dense_classifier, sparse_ce, toy_data
from tests.losses.test_logits import numpy_log_softmax
from tests.test_distiller import counted_classifier


def test_each_teacher_runs_once_and_the_loss_is_kl_to_the_weighted_mixture():
    first, first_counter = counted_classifier(16, "teacher_a")
    second, second_counter = counted_classifier(12, "teacher_b")
    student = dense_classifier(4)
    distiller = keras_kd.Distiller(
        [first, second], student, keras_kd.LogitsDistillation(temperature=2.0),
        teacher_weights=[1.0, 3.0], student_loss_weight=0.0,
    )
    distiller.compile(optimizer=keras.optimizers.SGD(0.0))
    x, y = toy_data(32)
    logs = distiller.fit(x, y, batch_size=32, epochs=1, verbose=0).history
    assert float(first_counter.calls) == 1.0 and float(second_counter.calls) == 1.0

    def soft(model):
        return np.exp(numpy_log_softmax(model.predict(x, verbose=0) / 2.0))

    mixture = 0.25 * soft(first) + 0.75 * soft(second)
    log_q = numpy_log_softmax(student.predict(x, verbose=0) / 2.0)
    expected = (mixture * (np.log(mixture) - log_q)).sum(1).mean() * 4.0
    assert logs["distillation_loss"][0] == pytest.approx(expected, rel=1e-5)


def test_features_are_tapped_from_a_named_teacher_and_the_ensemble_saves(tmp_path):
    first, second = dense_classifier(16, name="teacher_a"), dense_classifier(12, name="teacher_b")
    distiller = keras_kd.Distiller(
        [first, second], dense_classifier(4),
        [keras_kd.LogitsDistillation(),
         keras_kd.FeatureDistillation(teacher_layer_name="teacher_b/hidden",
                                      student_layer_name="hidden", projection="auto")],
    )
    distiller.compile(optimizer="adam", loss=sparse_ce())
    x, y = toy_data(32)
    distiller.fit(x, y, epochs=1, verbose=0)
    assert distiller.connectors["feature_distillation"].layers[0].units == 12
    distiller.save(tmp_path / "ensemble.keras")
    loaded = keras.models.load_model(tmp_path / "ensemble.keras")
    assert [t.name for t in loaded.teachers] == ["teacher_a", "teacher_b"]
    assert loaded.evaluate(x, y, verbose=0) == pytest.approx(distiller.evaluate(x, y, verbose=0))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"distillation_losses": keras_kd.FeatureDistillation(teacher_layer_name="hidden",
                                                              student_layer_name="hidden")},
         r"With several teachers, `teacher_layer_name='hidden'` must start with the name of the "
         r"teacher to tap, as '<teacher>/<layer>'. Teachers: \['teacher_a', 'teacher_b'\]"),
        ({"distillation_losses": keras_kd.FeatureDistillation()},
         r"FeatureDistillation reads the teacher's final output, but there are 2 teachers"),
        ({"teacher_weights": [1.0]},
         r"`teacher_weights` has 1 entries but there are 2 teachers"),
    ],
)
def test_ambiguous_ensembles_are_refused(kwargs, message):
    teachers = [dense_classifier(16, name="teacher_a"), dense_classifier(12, name="teacher_b")]
    with pytest.raises(ValueError, match=message):
        keras_kd.Distiller(teachers, dense_classifier(4), **kwargs)


def test_teachers_with_the_same_name_are_refused():
    with pytest.raises(ValueError, match=r"Teachers must have different names"):
        keras_kd.Distiller([dense_classifier(16, name="t"), dense_classifier(8, name="t")],
                           dense_classifier(4))
