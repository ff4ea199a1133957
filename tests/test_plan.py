"""Feature pairs planned from the graphs: stages, pairs, connectors, refusals."""

import pathlib

import keras
import numpy as np
import pytest

import keras_kd
from keras_kd.app import demo
from keras_kd.plan import FeaturePair, FeaturePlan, stages
from keras_kd.taps import resolve_layer
from tests.helpers import sparse_ce

FEATURES_PAGE = pathlib.Path(__file__).resolve().parent.parent / "docs" / "features.md"


def conv1d_student(name="seq_student"):
    """A Sequential with a nested Sequential 'stem': 40 -> 20 (stem/c1) -> 10 (c2)."""
    conv = keras.layers.Conv1D
    stem = keras.Sequential([keras.Input((40, 1)), conv(8, 3, strides=2, padding="same", name="c1")],
                            name="stem")
    return keras.Sequential([keras.Input((40, 1)), stem, conv(8, 3, strides=2, padding="same", name="c2"),
                             keras.layers.Flatten(), keras.layers.Dense(10)], name=name)


def test_demo_pair_is_paired_by_resolution_with_pointwise_connectors():
    plan = FeaturePlan(demo.teacher_model(), demo.student_model())
    assert [(s.resolution, s.layer) for s in plan.teacher_stages] == [((40,), "conv1"), ((20,), "conv2"),
                                                                       ((10,), "conv4")]
    assert [(s.resolution, s.layer) for s in plan.student_stages] == [((20,), "conv1"), ((10,), "conv2")]
    assert plan.pairs == [
        FeaturePair((20,), "conv2", "conv1", (None, 20, 32), (None, 20, 16), "Conv1D kernel 1, 16 -> 32 channels"),
        FeaturePair((10,), "conv4", "conv2", (None, 10, 48), (None, 10, 16), "Conv1D kernel 1, 16 -> 48 channels"),
    ]
    assert plan.table().splitlines()[-1] == "teacher stages without a partner of the same resolution: conv1 (40)"
    assert f"```text\n{plan.table()}\n```" in FEATURES_PAGE.read_text()  # the docs show what it prints


def test_the_plan_reads_the_graphs_without_running_the_models():
    calls = []
    inputs = keras.Input((40, 1))
    spied = keras.layers.Lambda(lambda t: calls.append(t) or t, name="spy")(inputs)
    teacher = keras.Model(inputs, demo.teacher_model()(spied), name="spied")
    calls.clear()  # building the graph called it once, symbolically
    assert [p.teacher_layer for p in FeaturePlan(teacher, demo.student_model()).pairs] == [
        "teacher/conv2", "teacher/conv4"]
    assert calls == []
    teacher(np.zeros((1, 40, 1), "float32"))
    assert len(calls) == 1  # the spy does see a forward pass


def test_a_distiller_built_with_the_plan_trains_one_step_on_the_demo_pair():
    teacher, student = demo.teacher_model(), demo.student_model()
    planned = keras_kd.plan_features(teacher, student)
    assert [(f.name, f.teacher_layer_name, f.student_layer_name, f.projection, f.loss) for f in planned] == [
        ("features_20", "conv2", "conv1", "auto", "mse"), ("features_10", "conv4", "conv2", "auto", "mse")]
    distiller = keras_kd.Distiller(teacher, student, [keras_kd.LogitsDistillation(4.0), *planned])
    assert {name: [type(layer).__name__ for layer in c.layers] for name, c in distiller.connectors.items()} == {
        "features_20": ["Conv1D"], "features_10": ["Conv1D"]}
    distiller.compile(optimizer="adam", loss=sparse_ce())
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 40, 1)).astype("float32"), rng.integers(0, 10, 16)
    before = [w.copy() for w in student.get_weights()]
    logs = distiller.fit(x, y, batch_size=16, epochs=1, verbose=0).history
    assert logs["features_20"][0] > 0 and logs["features_10"][0] > 0
    assert all(np.isfinite(logs[name][0]) for name in ("features_20", "features_10", "loss"))
    assert not any(np.array_equal(a, b) for a, b in zip(before, student.get_weights()))


def test_nested_functional_and_sequential_models_get_paths_the_taps_accept():
    inputs = keras.Input((40, 1))
    teacher = keras.Model(inputs, keras.layers.Dense(10)(demo.teacher_model(name="backbone")(inputs)),
                          name="wrapped")
    student = conv1d_student()
    plan = FeaturePlan(teacher, student)
    assert [(p.teacher_layer, p.student_layer, p.connector) for p in plan.pairs] == [
        ("backbone/conv2", "stem/c1", "Conv1D kernel 1, 8 -> 32 channels"),
        ("backbone/conv4", "c2", "Conv1D kernel 1, 8 -> 48 channels")]
    for pair in plan.pairs:
        assert tuple(resolve_layer(teacher, pair.teacher_layer).output.shape) == pair.teacher_shape
        assert tuple(resolve_layer(student, pair.student_layer).output.shape) == pair.student_shape
    distiller = keras_kd.Distiller(teacher, student, plan.losses())
    assert set(distiller.connectors) == {"features_20", "features_10"}


def residual_2d(name, channels):
    """8x8 input -> Rescaling -> conv (8x8) with a residual branch -> padding ->
    strided conv (4x4) with a squeeze-excitation side branch -> head."""
    layers = keras.layers
    inputs = keras.Input((8, 8, 3))
    x = layers.Rescaling(1 / 255, name="rescale")(inputs)
    x = layers.Conv2D(channels, 3, padding="same", name="stem")(x)
    branch = layers.Conv2D(channels, 3, padding="same", name="branch")(x)
    x = layers.Add(name="block1_out")([x, branch])
    x = layers.ZeroPadding2D(1, name="pad")(x)
    x = layers.Conv2D(channels, 3, strides=2, name="down")(x)  # 10x10 -> 4x4
    gate = layers.GlobalAveragePooling2D(keepdims=True, name="se_pool")(x)
    gate = layers.Conv2D(channels, 1, activation="sigmoid", name="se_conv")(gate)
    x = layers.Multiply(name="block2_out")([x, gate])
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, layers.Dense(3, name="logits")(x), name=name)


def test_stages_follow_the_main_path_and_skip_padding_and_weightless_stages():
    found = stages(residual_2d("teacher", 8), "teacher")
    # Not 'branch' (inside the residual), nor 'se_conv' (a 1x1 side branch),
    # nor 'pad' (10x10), nor 'rescale' (8x8, but its own stage would have
    # no weights: here 'stem' extends the 8x8 stage).
    assert [(s.resolution, s.layer, s.shape) for s in found] == [
        ((8, 8), "block1_out", (None, 8, 8, 8)), ((4, 4), "block2_out", (None, 4, 4, 8))]
    plan = FeaturePlan(residual_2d("teacher", 8), residual_2d("student", 8))
    assert [p.connector for p in plan.pairs] == ["none", "none"]


def test_a_stage_without_weights_is_not_a_feature():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Rescaling(1 / 255, name="rescale")(inputs)
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same", name="down")(x)
    model = keras.Model(inputs, keras.layers.Flatten()(x))
    assert [s.layer for s in stages(model)] == ["down"]  # 'rescale' alone at 8x8 is no feature


def test_a_dense_stem_before_the_feature_maps_is_not_the_head():
    inputs = keras.Input((16,))
    x = keras.layers.Reshape((8, 2), name="to_steps")(keras.layers.Dense(16, name="stem")(inputs))
    x = keras.layers.Conv1D(4, 3, strides=2, padding="same", name="down")(x)
    x = keras.layers.GlobalAveragePooling1D()(keras.layers.Conv1D(4, 3, strides=2, padding="same", name="down2")(x))
    model = keras.Model(inputs, keras.layers.Dense(3)(x))
    assert [(s.resolution, s.layer) for s in stages(model)] == [((8,), "to_steps"), ((4,), "down"), ((2,), "down2")]


def test_resnet50_to_mobilenetv3small_nested_in_a_wrapper():
    keras.backend.clear_session()  # MobileNetV3's activations are auto-named
    resnet = keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3))
    inputs = keras.Input((64, 64, 3))
    teacher = keras.Model(inputs, resnet(inputs), name="wrapper")
    student = keras.applications.MobileNetV3Small(weights=None, input_shape=(64, 64, 3))
    plan = FeaturePlan(teacher, student)
    assert [(p.resolution, p.teacher_layer, p.student_layer, p.teacher_shape[-1], p.student_shape[-1])
            for p in plan.pairs] == [
        ((32, 32), "resnet50/conv1_relu", "activation", 64, 16),
        ((16, 16), "resnet50/conv2_block3_out", "re_lu_2", 256, 72),
        ((8, 8), "resnet50/conv3_block4_out", "activation_1", 512, 96),
        ((4, 4), "resnet50/conv4_block6_out", "activation_11", 1024, 288),
        ((2, 2), "resnet50/conv5_block3_out", "activation_17", 2048, 576),
    ]
    assert plan.pairs[1].connector == "Conv2D kernel 1x1, 72 -> 256 channels"
    assert all(p.connector.startswith("Conv2D kernel 1x1, ") for p in plan.pairs)
    assert plan.unpaired() == {"teacher": [], "student": []}
    for feature, pair in zip(plan.losses(), plan.pairs):
        feature.validate_model_compatibility(teacher, student)  # the taps accept the paths
        assert tuple(resolve_layer(student, pair.student_layer).output.shape) == pair.student_shape


def test_a_path_instead_of_a_model_is_refused():
    with pytest.raises(ValueError, match=r"The teacher must be a keras.Model, but received str: 't.keras'. "
                                         r"Load a saved model first: keras.models.load_model"):
        FeaturePlan("t.keras", demo.student_model())


def test_a_subclassed_model_is_refused():
    class Student(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match=r"Student 'student' is a Student without a symbolic graph \(a "
                                         r"subclassed model, or a Sequential built without an Input\), so its "
                                         r"stages cannot be read. Pass a Functional or Sequential model"):
        FeaturePlan(demo.teacher_model(), Student(name="student"))


def test_models_without_a_resolution_change_are_refused():
    flat = keras.Sequential([keras.Input((40, 1)), keras.layers.Conv1D(4, 3, padding="same"),
                             keras.layers.Flatten(), keras.layers.Dense(10)], name="flat")
    with pytest.raises(ValueError, match=r"Student 'flat' has no change of spatial or sequence resolution "
                                         r"along its main path \(input 40, feature map resolutions \[40\]\)"):
        FeaturePlan(demo.teacher_model(), flat)
    mlp = keras.Sequential([keras.Input((40,)), keras.layers.Dense(10)], name="mlp")
    with pytest.raises(ValueError, match=r"Teacher 'mlp' has no change of spatial or sequence resolution "
                                         r"along its main path \(input not a feature map, feature map "
                                         r"resolutions none\)"):
        FeaturePlan(mlp, demo.student_model())


def test_unknown_sizes_and_no_shared_resolution_are_refused():
    any_length = keras.Sequential([keras.Input((None, 1)), keras.layers.Conv1D(4, 3, strides=2, name="c")],
                                  name="any_length")
    with pytest.raises(ValueError, match=r"Layer 'c' of student 'any_length' outputs feature maps of unknown "
                                         r"size \(None, None, 4\).*Build the model with a fixed input size"):
        FeaturePlan(demo.teacher_model(), any_length)
    coarse = keras.Sequential([keras.Input((40, 1)), keras.layers.Conv1D(4, 5, strides=5, name="c"),
                               keras.layers.Flatten(), keras.layers.Dense(10)], name="coarse")
    with pytest.raises(ValueError, match=r"Teacher 'teacher' and student 'coarse' have no stage of the same "
                                         r"resolution: teacher \[40, 20, 10\], student \[8\]"):
        keras_kd.plan_features(demo.teacher_model(), coarse)
