"""auto_connector builds only what is needed, with the right output shape."""

import keras
import numpy as np
import pytest

from keras_kd import connectors


@pytest.mark.parametrize(
    "student, teacher, layers",
    [
        ((None, 8), (None, 16), ["Dense"]),
        ((None, 20, 8), (None, 20, 32), ["Conv1D"]),
        ((None, 20, 8), (None, 10, 8), ["AveragePooling1D"]),
        ((None, 20, 8), (None, 10, 32), ["AveragePooling1D", "Conv1D"]),
        ((None, 7, 8), (None, 10, 8), ["_Interpolate"]),
        ((None, 16, 16, 4), (None, 8, 8, 12), ["AveragePooling2D", "Conv2D"]),
        ((None, 6, 6, 4), (None, 9, 9, 4), ["_Interpolate"]),
    ],
)
def test_auto_connector_maps_student_shape_to_teacher_shape(student, teacher, layers):
    connector = connectors.auto_connector(student, teacher)
    assert [type(layer).__name__ for layer in connector.layers] == layers
    x = np.random.default_rng(0).normal(size=(2,) + student[1:]).astype("float32")
    assert tuple(connector(x).shape) == (2,) + teacher[1:]


def test_no_connector_for_identical_shapes():
    assert connectors.auto_connector((None, 5, 4), (None, 5, 4)) is None


def test_interpolation_resizes_a_constant_map_to_the_same_constant():
    connector = connectors.auto_connector((None, 7, 2), (None, 10, 2))
    np.testing.assert_allclose(connector(np.full((1, 7, 2), 3.0, "float32")), np.full((1, 10, 2), 3.0), rtol=1e-6)


def test_mismatched_ranks_are_refused():
    with pytest.raises(ValueError, match=r"from a student feature of shape \(None, 8\) to a teacher "
                                         r"feature of shape \(None, 4, 8\)"):
        connectors.auto_connector((None, 8), (None, 4, 8))


def test_a_users_layer_is_built_for_the_student_shape():
    layer = connectors.build_connector(keras.layers.Dense(5), (None, 3))
    assert layer.built and layer.kernel.shape == (3, 5)
