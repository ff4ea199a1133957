"""Learnable connectors: map a student feature to the teacher feature's shape.

Features are channels-last, as everywhere in Keras: `(batch, channels)`,
`(batch, steps, channels)` or `(batch, height, width, channels)`.
"""

import keras


def auto_connector(student_shape, teacher_shape, resize=True, project=True, name=None):
    """Builds the smallest connector from `student_shape` to `teacher_shape`.

    - a spatial resize when the spatial sizes differ: average pooling when
      the student's size is a whole multiple of the teacher's, otherwise
      (bilinear) interpolation;
    - then a `Dense` layer for `(batch, channels)` features, or a 1x1
      convolution for 1-D/2-D feature maps, when the channel counts differ.

    Args:
        student_shape: the student feature's shape, batch axis included.
        teacher_shape: the teacher feature's shape, batch axis included.
        resize: whether to match spatial sizes.
        project: whether to match channel counts.
        name: the connector's name.

    Returns:
        A built `keras.Sequential`, or `None` when nothing needs mapping.

    Raises:
        ValueError: if the features' ranks differ or are not 2, 3 or 4.

    Example:

    ```python
    connector = auto_connector((None, 20, 8), (None, 10, 32))
    # AveragePooling1D(2) then Conv1D(32, 1)
    ```

    Reference:
        Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015,
        arXiv:1412.6550 (the regressor from student to teacher features).
    """
    student_shape, teacher_shape = tuple(student_shape), tuple(teacher_shape)
    rank = len(teacher_shape)
    if len(student_shape) != rank or rank not in (2, 3, 4):
        raise ValueError(
            f"Cannot build a connector from a student feature of shape "
            f"{student_shape} to a teacher feature of shape {teacher_shape}: "
            f"both must be (batch, channels), (batch, steps, channels) or "
            f"(batch, height, width, channels). Tap layers whose outputs have "
            f"one of these shapes, or pass your own keras.layers.Layer as "
            f"`projection`."
        )
    layers = []
    student_space, teacher_space = student_shape[1:-1], teacher_shape[1:-1]
    if resize and student_space != teacher_space:
        layers.append(_resize(student_space, teacher_space))
    if project and student_shape[-1] != teacher_shape[-1]:
        channels = teacher_shape[-1]
        layers.append(
            {2: keras.layers.Dense, 3: keras.layers.Conv1D, 4: keras.layers.Conv2D}[rank](
                channels, **({} if rank == 2 else {"kernel_size": 1})
            )
        )
    if not layers:
        return None
    connector = keras.Sequential(layers, name=name)
    connector.build(student_shape)
    return connector


def build_connector(layer, student_shape, name=None):
    """Builds a user's connector layer for the student feature's shape.

    Args:
        layer: a `keras.layers.Layer`.
        student_shape: the student feature's shape, batch axis included.
        name: unused; for symmetry with `auto_connector`.

    Returns:
        `layer`, built.
    """
    del name
    if not layer.built:
        layer.build(tuple(student_shape))
    return layer


def _resize(student_space, teacher_space):
    if any(size is None for size in student_space + teacher_space):
        raise ValueError(
            f"Cannot resize feature maps of unknown size (student "
            f"{student_space}, teacher {teacher_space}). Give the models a "
            f"fixed input size, or pass your own keras.layers.Layer as "
            f"`projection`."
        )
    factors = [s // t for s, t in zip(student_space, teacher_space)]
    if all(s == t * f and f >= 1 for s, t, f in zip(student_space, teacher_space, factors)):
        pool = keras.layers.AveragePooling1D if len(factors) == 1 else keras.layers.AveragePooling2D
        size = factors[0] if len(factors) == 1 else tuple(factors)
        return pool(pool_size=size, strides=size)
    return _Interpolate(teacher_space)


@keras.saving.register_keras_serializable(package="keras_kd")
class _Interpolate(keras.layers.Layer):
    """Bilinear resize of a 1-D or 2-D feature map to a fixed size."""

    def __init__(self, size, **kwargs):
        super().__init__(**kwargs)
        self.size = tuple(size)

    def call(self, inputs):
        if len(self.size) == 1:  # (batch, steps, channels) as a 1-pixel-wide image
            image = keras.ops.expand_dims(inputs, 2)
            resized = keras.ops.image.resize(image, (self.size[0], 1), "bilinear")
            return keras.ops.squeeze(resized, 2)
        return keras.ops.image.resize(inputs, self.size, "bilinear")

    def compute_output_shape(self, input_shape):
        return (input_shape[0],) + self.size + (input_shape[-1],)

    def get_config(self):
        return {**super().get_config(), "size": self.size}


__all__ = [
    "auto_connector",
    "build_connector",
]
