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


# ------------------------------------------------- softmax, wherever it is

import tensorflow as tf  # noqa: E402
from keras import ops  # noqa: E402

import keras_kd  # noqa: E402
from tests.helpers import numpy_kl  # noqa: E402

CLASSES = 5
XS = np.random.default_rng(1).normal(size=(16, 8)).astype("float32") * 3.0


def base_layers():
    """The hidden and logits layers every teacher form shares (weights fixed)."""
    keras.utils.set_random_seed(3)
    hidden = keras.layers.Dense(16, activation="relu", name="hidden")
    logits = keras.layers.Dense(CLASSES, name="logits")
    inputs = keras.Input((8,))
    logits(hidden(inputs))
    return hidden, logits


def dense_like(layer, **kwargs):
    """A new Dense with `layer`'s weights and other options."""
    inputs = keras.Input((8,)) if layer.kernel.shape[0] == 8 else keras.Input((layer.kernel.shape[0],))
    copy = keras.layers.Dense(layer.units, **kwargs)
    copy(inputs)
    copy.set_weights(layer.get_weights())
    return copy


def teacher_forms():
    hidden, logits = base_layers()

    def functional(head):
        inputs = keras.Input((8,))
        return keras.Model(inputs, head(logits(hidden(inputs))))

    def activated(activation):
        inputs = keras.Input((8,))
        return keras.Model(inputs, dense_like(logits, activation=activation)(hidden(inputs)))

    def nested():
        inner = activated("softmax")
        inputs = keras.Input((8,))
        return keras.Model(inputs, inner(keras.layers.Rescaling(1.0)(inputs)), name="wrapper")

    class Subclassed(keras.Model):
        def call(self, x):
            return ops.softmax(logits(hidden(x)))

    subclassed = Subclassed()
    subclassed(XS[:2])
    return {
        "logits": functional(lambda t: t),
        "Dense(activation='softmax')": activated("softmax"),
        "Dense(activation=tf.nn.softmax)": activated(tf.nn.softmax),
        "Activation(tf.nn.softmax)": functional(keras.layers.Activation(tf.nn.softmax)),
        "Activation('softmax')": functional(keras.layers.Activation("softmax")),
        "Softmax()": functional(keras.layers.Softmax()),
        "Lambda(ops.softmax)": functional(keras.layers.Lambda(ops.softmax)),
        "keras.ops.softmax in the graph": functional(ops.softmax),
        "nested: Rescaling -> model ending in softmax": nested(),
        "Sequential([..., model ending in softmax])": keras.Sequential(
            [keras.Input((8,)), keras.layers.Rescaling(1.0), activated("softmax")]),
        "subclassed, returns ops.softmax": subclassed,
    }


def distillation_loss(teacher, student, temperature=4.0):
    distiller = keras_kd.Distiller(teacher, student, keras_kd.LogitsDistillation(temperature),
                                   student_loss_weight=0.0)
    distiller.compile(optimizer="sgd")
    return float(distiller.test_on_batch(XS, return_dict=True)["distillation_loss"])


def student_model(**dense_kwargs):
    keras.utils.set_random_seed(4)
    inputs = keras.Input((8,))
    return keras.Model(inputs, keras.layers.Dense(CLASSES, name="head", **dense_kwargs)(inputs))


def test_every_spelling_and_depth_of_softmax_gives_the_loss_of_the_logits_model():
    forms = teacher_forms()
    expected = distillation_loss(forms.pop("logits"), student_model())
    assert expected > 0.1
    for name, teacher in forms.items():
        if name.startswith("subclassed"):
            with pytest.warns(UserWarning, match=r"holds probabilities .* distils from log\(p\)"):
                value = distillation_loss(teacher, student_model())
        else:
            assert taps.ends_with_softmax(teacher), name
            value = distillation_loss(teacher, student_model())
        np.testing.assert_allclose(value, expected, rtol=1e-5, err_msg=name)


def test_a_student_ending_in_softmax_is_distilled_from_its_logits():
    teacher = teacher_forms()["logits"]
    expected = distillation_loss(teacher, student_model())
    np.testing.assert_allclose(distillation_loss(teacher, student_model(activation="softmax")),
                               expected, rtol=1e-5)


def test_a_mixed_float16_softmax_student_is_exact_where_its_probabilities_underflow():
    teacher = teacher_forms()["logits"]
    keras.config.set_dtype_policy("mixed_float16")
    student = student_model(activation="softmax", kernel_initializer=keras.initializers.RandomNormal(stddev=8.0))
    keras.config.set_dtype_policy("float32")
    head = student.get_layer("head")
    true_logits = (XS.astype("float16") @ head.kernel.numpy().astype("float16")
                   + head.bias.numpy().astype("float16"))  # the float16 Dense's own computation
    probabilities = student(XS)
    assert probabilities.dtype == "float16" and float(ops.min(probabilities)) == 0.0  # underflow
    expected = numpy_kl(teacher(XS), true_logits, 4.0)
    np.testing.assert_allclose(distillation_loss(teacher, student), expected, rtol=1e-5)
    # log(p) of the float16 probabilities, what a probability-space loss would see, is far off.
    naive = numpy_kl(teacher(XS), np.log(np.maximum(np.asarray(probabilities, "float64"), 1e-38)), 4.0)
    assert abs(naive - expected) > 0.1 * expected


def test_float16_probabilities_without_a_visible_softmax_are_refused():
    class Probabilities(keras.Model):
        def __init__(self):
            super().__init__(dtype="mixed_float16")
            self.head = keras.layers.Dense(CLASSES, dtype="mixed_float16")

        def call(self, x):
            return ops.softmax(self.head(x))

    student = Probabilities()
    student(XS[:2])
    with pytest.raises(ValueError, match=r"Output 0 of student .* holds probabilities .* in float16.* "
                                         r"Return logits from the model"):
        keras_kd.Distiller(teacher_forms()["logits"], student)


def test_a_model_that_cannot_be_probed_is_named_in_a_warning():
    class Never(keras.Model):
        def __init__(self):
            super().__init__(name="never_called")
            self.head = keras.layers.Dense(CLASSES)

        def call(self, x):
            return ops.softmax(self.head(x))

    with pytest.warns(UserWarning, match=r"outputs of student 'never_called' cannot be checked for "
                                         r"probabilities: it has no known input shape"):
        taps.ModelView(Never(), role="student")
