"""Feature distillation through the Distiller: one pass, connectors, relations."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_kd
from keras_kd import losses
from tests.helpers import numpy_kl, sparse_ce
from tests.test_distiller import CallCounter


def conv_model(channels, steps_stride, name, counter=None):
    """(batch, 16, 1) -> conv 'stage1' -> conv 'stage2' -> pool -> 3 logits."""
    inputs = keras.Input((16, 1))
    x = counter(inputs) if counter is not None else inputs
    x = keras.layers.Conv1D(channels, 3, padding="same", activation="relu", name="stage1")(x)
    x = keras.layers.Conv1D(channels, 3, strides=steps_stride, padding="same",
                            activation="relu", name="stage2")(x)
    x = keras.layers.GlobalAveragePooling1D(name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="logits")(x), name=name)


def data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 16, 1)).astype("float32"), rng.integers(0, 3, n)


def feature_distiller(teacher, student, **kwargs):
    distiller = keras_kd.Distiller(
        teacher, student,
        [
            keras_kd.LogitsDistillation(4.0),
            keras_kd.FeatureDistillation(teacher_layer_name="stage1", student_layer_name="stage1",
                                         projection="auto"),
            keras_kd.FeatureDistillation(teacher_layer_name="stage2", student_layer_name="stage2",
                                         loss=losses.AttentionTransfer(), projection="auto"),
        ],
        distillation_loss_weights=[1.0, 0.5, 100.0], **kwargs,
    )
    distiller.compile(optimizer="adam", loss=sparse_ce(), metrics=["accuracy"])
    return distiller


def test_two_feature_pairs_and_logits_run_each_model_once_per_step():
    teacher_counter, student_counter = CallCounter(), CallCounter()
    teacher = conv_model(16, 1, "teacher", teacher_counter)
    student = conv_model(4, 2, "student", student_counter)
    x, y = data()
    feature_distiller(teacher, student).fit(x, y, batch_size=32, epochs=1, verbose=0)
    assert float(teacher_counter.calls) == 1.0
    assert float(student_counter.calls) == 1.0


def test_terms_are_logged_by_name_and_connectors_map_widths_and_lengths():
    distiller = feature_distiller(conv_model(16, 1, "teacher"), conv_model(4, 2, "student"))
    assert set(distiller.connectors) == {"feature_distillation", "feature_distillation_1"}
    # stage1: 4 -> 16 channels (1x1 conv); stage2: length 8 -> 16, AT needs no channel map.
    assert [type(layer).__name__ for layer in distiller.connectors["feature_distillation"].layers] == ["Conv1D"]
    assert [type(layer).__name__ for layer in distiller.connectors["feature_distillation_1"].layers] == ["_Interpolate"]
    x, y = data()
    logs = distiller.evaluate(x, y, batch_size=len(x), verbose=0, return_dict=True)

    # Each term recomputed outside the Distiller: taps read by separate
    # models, the connectors applied by hand, the losses called directly.
    def tap(model, name):
        return keras.Model(model.inputs, model.get_layer(name).output)(x)

    teacher, student, connectors = distiller.teacher, distiller.student, distiller.connectors
    expected = {
        "logits_distillation": numpy_kl(teacher(x), student(x), temperature=4.0),
        "feature_distillation": float(keras.ops.mean(
            (tap(teacher, "stage1") - connectors["feature_distillation"](tap(student, "stage1"))) ** 2)),
        "feature_distillation_1": float(losses.AttentionTransfer()(
            tap(teacher, "stage2"), connectors["feature_distillation_1"](tap(student, "stage2")))),
    }
    for name, value in expected.items():
        assert logs[name] == pytest.approx(value, rel=1e-5), name
    weighted = (expected["logits_distillation"] + 0.5 * expected["feature_distillation"]
                + 100.0 * expected["feature_distillation_1"])
    assert logs["distillation_loss"] == pytest.approx(weighted, rel=1e-5)
    assert min(expected.values()) > 0


def test_connectors_train_and_save_with_the_distiller_but_not_with_the_student(tmp_path):
    teacher, student = conv_model(16, 1, "teacher"), conv_model(4, 1, "student")
    student_weights = len(student.weights)
    distiller = feature_distiller(teacher, student)
    connector = distiller.connectors["feature_distillation"]
    assert all(any(v is w for w in distiller.trainable_variables) for v in connector.trainable_variables)
    before = connector.get_weights()
    x, y = data()
    distiller.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert not np.array_equal(before[0], connector.get_weights()[0])
    assert len(student.weights) == student_weights

    student.save(tmp_path / "student.keras")
    assert len(keras.models.load_model(tmp_path / "student.keras").weights) == student_weights
    distiller.save(tmp_path / "distiller.keras")
    loaded = keras.models.load_model(tmp_path / "distiller.keras")
    for a, b in zip(connector.get_weights(), loaded.connectors["feature_distillation"].get_weights()):
        np.testing.assert_array_equal(a, b)
    assert loaded.evaluate(x, y, verbose=0) == pytest.approx(distiller.evaluate(x, y, verbose=0))


def test_nested_teacher_layers_and_a_subclassed_student():
    inner_in = keras.Input((16, 1))
    stage = keras.layers.Conv1D(8, 3, padding="same", activation="relu", name="stage3")(inner_in)
    backbone = keras.Model(inner_in, keras.layers.GlobalAveragePooling1D()(stage), name="backbone")
    inputs = keras.Input((16, 1))
    teacher = keras.Model(inputs, keras.layers.Dense(3)(backbone(inputs)))

    class Student(keras.Model):
        def __init__(self):
            super().__init__()
            self.block = keras.layers.Conv1D(4, 3, padding="same", activation="relu", name="block")
            self.pool = keras.layers.GlobalAveragePooling1D()
            self.head = keras.layers.Dense(3)

        def call(self, x):
            return self.head(self.pool(self.block(x)))

    student = Student()
    x, y = data()
    student(x[:1])
    distiller = keras_kd.Distiller(
        teacher, student,
        keras_kd.FeatureDistillation(teacher_layer_name="backbone/stage3",
                                     student_layer_name="block", projection="auto"),
        student_loss_weight=0.0,
    )
    distiller.compile(optimizer="adam")
    # The value is the MSE between the nested teacher layer's output and the
    # subclassed student's `block` output after the connector, each read
    # here without the Distiller.
    teacher_tap = keras.Model(backbone.inputs, backbone.get_layer("stage3").output)(x)
    student_tap = distiller.connectors["feature_distillation"](student.block(x))
    expected = float(keras.ops.mean((teacher_tap - student_tap) ** 2))
    logs = distiller.evaluate(x, y, batch_size=len(x), verbose=0, return_dict=True)
    assert logs["distillation_loss"] == pytest.approx(expected, rel=1e-5) and expected > 0
    history = distiller.fit(x, y, batch_size=8, epochs=3, verbose=0).history
    assert history["distillation_loss"][-1] < history["distillation_loss"][0]


def test_different_shapes_without_projection_suggest_auto():
    with pytest.raises(ValueError, match=r"teacher 'stage1' with student 'stage1', but their shapes "
                                         r"differ: teacher \(None, 16, 16\), student \(None, 16, 4\). "
                                         r"Pass projection='auto'"):
        keras_kd.Distiller(
            conv_model(16, 1, "teacher"), conv_model(4, 1, "student"),
            keras_kd.FeatureDistillation(teacher_layer_name="stage1", student_layer_name="stage1"),
        )


def test_an_unknown_layer_fails_at_construction_listing_the_layers():
    with pytest.raises(ValueError, match=r"'stage9' is not a layer of student 'student'. Available: "
                                         r"\[.*'stage1', 'stage2', 'pool', 'logits'\]"):
        keras_kd.Distiller(
            conv_model(16, 1, "teacher"), conv_model(4, 1, "student"),
            keras_kd.FeatureDistillation(teacher_layer_name="stage1", student_layer_name="stage9"),
        )


def test_final_output_can_be_named_for_one_side():
    distiller = keras_kd.Distiller(
        conv_model(16, 1, "teacher"), conv_model(4, 1, "student"),
        keras_kd.FeatureDistillation(loss=losses.SimilarityPreserving(),
                                     teacher_layer_name=keras_kd.FINAL_OUTPUT,
                                     student_layer_name="pool"),
    )
    distiller.compile(optimizer="adam", loss=sparse_ce())
    x, y = data()
    logs = distiller.evaluate(x, y, batch_size=len(x), verbose=0, return_dict=True)
    teacher_output, student_pool = distiller.distillation_outputs(x)["feature_distillation"]
    assert teacher_output.shape == distiller.teacher(x).shape  # the final output, as named
    expected = float(losses.SimilarityPreserving()(teacher_output, student_pool))
    assert logs["distillation_loss"] == pytest.approx(expected, rel=1e-5) and expected > 0


def test_relation_losses_use_each_replicas_batch(tmp_path, two_replicas):
    """2 replicas: the value is the mean of the single-device values on the halves."""
    teacher, student = conv_model(16, 1, "teacher"), conv_model(4, 1, "student")
    weights = teacher.get_weights(), student.get_weights()
    x, y = data(16)

    def evaluate(strategy, x, y):
        with strategy.scope():
            t, s = conv_model(16, 1, "teacher"), conv_model(4, 1, "student")
            t.set_weights(weights[0]), s.set_weights(weights[1])
            distiller = keras_kd.Distiller(
                t, s, keras_kd.FeatureDistillation(loss=losses.RKDDistance(),
                                                   teacher_layer_name="pool", student_layer_name="pool"),
                student_loss_weight=0.0,
            )
            distiller.compile(optimizer="adam")
        ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(len(x))
        return distiller.evaluate(ds, verbose=0, return_dict=True)["distillation_loss"]

    default = tf.distribute.get_strategy()
    halves = [evaluate(default, x[:8], y[:8]), evaluate(default, x[8:], y[8:])]
    whole = evaluate(default, x, y)
    mirrored = evaluate(two_replicas, x, y)
    assert mirrored == pytest.approx(np.mean(halves), rel=1e-5)
    assert abs(whole - np.mean(halves)) > 1e-4  # relations do depend on the batch


def test_evaluate_with_taps_moves_no_student_batchnorm_statistics():
    inputs = keras.Input((16, 1))
    x = keras.layers.Conv1D(4, 3, padding="same", name="stage1")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    student = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling1D()(x)))
    distiller = keras_kd.Distiller(
        conv_model(16, 1, "teacher"), student,
        keras_kd.FeatureDistillation(teacher_layer_name="stage1", student_layer_name="bn",
                                     projection="auto"),
    )
    distiller.compile(optimizer="adam", loss=sparse_ce())
    before = [w.numpy().copy() for w in student.get_layer("bn").non_trainable_weights]
    distiller.evaluate(*data(), verbose=0)
    after = [w.numpy() for w in student.get_layer("bn").non_trainable_weights]
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
