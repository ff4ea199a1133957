"""ModelView: one pass returns the output and taps, at any depth, any model kind."""

import keras
import numpy as np
import pytest

from keras_kd import taps


def nested_functional():
    inner_in = keras.Input((8,))
    stage = keras.layers.Dense(6, activation="relu", name="stage3")(inner_in)
    backbone = keras.Model(inner_in, keras.layers.Dense(5, name="stage4")(stage), name="backbone")
    inputs = keras.Input((8,))
    return keras.Model(inputs, keras.layers.Dense(3, name="head")(backbone(inputs)), name="outer")


class Subclassed(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.block = keras.layers.Dense(6, activation="relu", name="block")
        self.head = keras.layers.Dense(3, name="head")

    def call(self, x):
        return self.head(self.block(x))


X = np.random.default_rng(0).normal(size=(4, 8)).astype("float32")


def test_nested_path_is_tapped_in_the_same_pass():
    model = nested_functional()
    view = taps.ModelView(model, {"backbone/stage3": "teacher_layer_name"})
    outputs = view(X, training=False)
    stage3 = keras.Model(model.get_layer("backbone").inputs,
                         model.get_layer("backbone").get_layer("stage3").output)
    np.testing.assert_allclose(outputs.taps["backbone/stage3"], stage3(X), rtol=1e-6)
    np.testing.assert_allclose(outputs.output, model(X), rtol=1e-6)
    assert "call" not in vars(model.get_layer("backbone").get_layer("stage3"))  # unpatched


def test_sequential_built_with_an_input_is_tapped():
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, name="a"), keras.layers.Dense(3)])
    outputs = taps.ModelView(model, {"a": "student_layer_name"})(X, training=False)
    np.testing.assert_allclose(outputs.taps["a"], model.get_layer("a")(X), rtol=1e-6)


def test_subclassed_model_is_tapped_and_its_shapes_are_known_once_called():
    model = Subclassed()
    model(X)
    view = taps.ModelView(model, {"block": "student_layer_name"})
    np.testing.assert_allclose(view(X, training=False).taps["block"], model.block(X), rtol=1e-6)
    spec = view.output_spec()
    assert spec.taps["block"].shape.as_list() == [None, 6]
    assert spec.output.shape.as_list() == [None, 3]


def test_unknown_names_list_what_exists_at_that_level():
    model = nested_functional()
    with pytest.raises(ValueError, match=r"`teacher_layer_name='block9'`: 'block9' is not a layer "
                                         r"of teacher 'outer'. Available: \['input_layer.*'backbone', 'head'\]"):
        taps.ModelView(model, {"block9": "teacher_layer_name"}, "teacher")
    with pytest.raises(ValueError, match=r"'stage9' is not a layer of 'backbone'. Available: "
                                         r"\[.*'stage3', 'stage4'\]"):
        taps.ModelView(model, {"backbone/stage9": "teacher_layer_name"}, "teacher")
    with pytest.raises(ValueError, match=r"'head' of teacher 'outer' is a Dense, which has no sub-layers"):
        taps.ModelView(model, {"head/kernel": "teacher_layer_name"}, "teacher")


def test_a_layer_that_runs_twice_is_refused():
    shared = keras.layers.Dense(8, name="shared")
    inputs = keras.Input((8,))
    model = keras.Model(inputs, shared(shared(inputs)))
    view = taps.ModelView(model, {"shared": "student_layer_name"}, "student")
    with pytest.raises(ValueError, match=r"Layer 'shared' of student .* ran 2 times in one forward pass"):
        view(X, training=False)


def test_a_softmax_activation_gives_its_input_as_logits_in_the_same_pass():
    inputs = keras.Input((8,))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="head")(inputs))
    outputs = taps.ModelView(model, {"head": "student_layer_name"})(X, training=False)
    head = model.get_layer("head")
    np.testing.assert_allclose(outputs.logits, X @ head.kernel.numpy() + head.bias.numpy(), rtol=1e-5)
    np.testing.assert_allclose(outputs.output, model(X), rtol=1e-6)
    np.testing.assert_allclose(outputs.taps["head"], model(X), rtol=1e-6)  # the layer's output
    assert "call" not in vars(head) and head.activation is keras.activations.softmax


def test_taps_named_output_or_logits_are_the_layers_not_the_final_output():
    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(4, name="logits")(inputs)
    hidden = keras.layers.Dense(5, name="output")(hidden)
    model = keras.Model(inputs, keras.layers.Dense(3, name="head")(hidden))
    outputs = taps.ModelView(model, {"logits": "teacher_layer_name", "output": "teacher_layer_name"})(
        X, training=False)
    assert outputs.taps["logits"].shape == (4, 4) and outputs.taps["output"].shape == (4, 5)
    assert outputs.output.shape == (4, 3)
    np.testing.assert_allclose(outputs.taps["logits"], model.get_layer("logits")(X), rtol=1e-6)
