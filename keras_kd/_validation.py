"""Argument checks shared by every module.

Each check raises `ValueError` with what was received, what was expected
and how to fix it, at construction time. This module imports no loss and
no Distiller (it is a leaf of the package).
"""

import math
import numbers
import warnings

import keras


def as_float(value):
    """The Python float of a number or a scalar `keras.Variable`."""
    return float(keras.ops.convert_to_numpy(value))


def check_number(value, argument, minimum=None, maximum=None, strict=False):
    """Validates a finite real-number argument and returns it as a float.

    Args:
        value: what the user passed.
        argument: the argument's name, used in the message.
        minimum: the smallest allowed value, or `None`.
        maximum: the largest allowed value, or `None`.
        strict: whether `minimum` itself is excluded.

    Returns:
        `value` as a Python float.

    Raises:
        ValueError: if `value` is not a finite real number or out of range.

    Example:

    ```python
    temperature = check_number(4.0, "temperature", minimum=0.0, strict=True)
    ```
    """
    if isinstance(value, keras.Variable):
        value = as_float(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(
            f"`{argument}` must be a number, but received {value!r} "
            f"of type {type(value).__name__}. Pass a float, e.g. "
            f"{argument}=1.0."
        )
    if not math.isfinite(value):
        raise ValueError(
            f"`{argument}` must be a finite number, but received {value!r}. "
            f"Pass a finite value."
        )
    low_ok = minimum is None or (value > minimum if strict else value >= minimum)
    high_ok = maximum is None or value <= maximum
    if not (low_ok and high_ok):
        if minimum is not None and maximum is not None:
            expected = f"in [{minimum}, {maximum}]"
        elif strict:
            expected = f"> {minimum}"
        else:
            expected = f">= {minimum}"
        raise ValueError(
            f"`{argument}` must be {expected}, but received {value!r}. "
            f"Pass a value {expected}."
        )
    return float(value)


MAX_TEMPERATURE = 1000.0
"""The largest distillation temperature accepted.

Softened by `T`, a teacher's log-probabilities differ from the uniform
distribution's by about `spread / T` (`spread`: the range of its logits),
and the `T²`-scaled KL is a sum of such differences, cancelling to a value
float32 resolves only while `T` is small against `1 / eps ≈ 8e6`. Measured
on logits of standard deviation 3 over 10 classes: the float32 `KL · T²`
equals the float64 value to 0.02% at `T = 1000`, is 5% off at `1e4`,
negative at `1e5` and exactly 0 at `1e9` (the teacher's signal is gone). Far
below the bound the loss already behaves as its large-`T` limit, matching
centered logits (Hinton et al., 2015).
"""


def check_temperature(value, argument="temperature"):
    """Validates a distillation temperature: finite, > 0, <= `MAX_TEMPERATURE`.

    Args:
        value: the temperature (a number or a `keras.Variable`).
        argument: the argument's name, for the message.

    Returns:
        `value` as a Python float.

    Raises:
        ValueError: if `value` is not a number in `(0, MAX_TEMPERATURE]`;
            above the bound, the message gives the reason.

    Example:

    ```python
    temperature = check_temperature(4.0)
    ```
    """
    value = check_number(value, argument, minimum=0.0, strict=True)
    if value > MAX_TEMPERATURE:
        raise ValueError(
            f"`{argument}` is {value:g}, above {MAX_TEMPERATURE:g}: softened that much, the "
            f"teacher's distribution is uniform to float32 precision and the distillation "
            f"loss is rounding noise (exactly 0 at 1e9), so the student would learn nothing "
            f"from the teacher. Pass a temperature <= {MAX_TEMPERATURE:g} (1 to 20 is usual)."
        )
    return value


def check_count(value, argument, minimum=1):
    """Validates a whole-number argument (a count) and returns it as an int.

    Args:
        value: what the user passed.
        argument: the argument's name, used in the message.
        minimum: the smallest allowed value.

    Returns:
        `value` as a Python int.

    Raises:
        ValueError: if `value` is not a whole number (`2.5` would otherwise
            be truncated to 2 without a word) or is below `minimum`.

    Example:

    ```python
    top_k = check_count(16, "top_k")
    ```
    """
    whole = is_whole_number(value) or (
        isinstance(value, numbers.Real) and not isinstance(value, bool)
        and math.isfinite(value) and float(value).is_integer())
    if not whole:
        raise ValueError(
            f"`{argument}` must be a whole number, but received {value!r} of "
            f"type {type(value).__name__}. Pass an integer, e.g. {argument}={max(minimum, 16)}."
        )
    if value < minimum:
        raise ValueError(
            f"`{argument}` must be >= {minimum}, but received {value!r}. "
            f"Pass a value >= {minimum}."
        )
    return int(value)


def check_texts(value, argument):
    """Validates a non-empty list of strings and returns it as a list.

    Args:
        value: what the user passed.
        argument: the argument's name, used in the message.

    Returns:
        `value` as a list of `str`.

    Raises:
        ValueError: if `value` is one string (it would be read as a list of
            one-character strings), empty, or holds something else.
    """
    if isinstance(value, (str, bytes)):
        raise ValueError(
            f"`{argument}` must be a list of strings, but received one string "
            f"({value[:40]!r}), which would be read as one text per character. "
            f"Pass [{value[:40]!r}]."
        )
    items = list(value) if isinstance(value, (list, tuple)) else None
    if not items or not all(isinstance(item, str) for item in items):
        bad = None if not items else next(i for i, item in enumerate(items) if not isinstance(item, str))
        received = f"{type(value).__name__}" if items is None else (
            "an empty list" if not items else
            f"a list holding {type(items[bad]).__name__} at index {bad} ({items[bad]!r:.40})")
        raise ValueError(
            f"`{argument}` must be a non-empty list of strings, but received "
            f"{received}. Pass e.g. {argument}=['def add', 'class Stack']."
        )
    return items


def is_whole_number(value):
    """Whether `value` is an integer (Python or NumPy), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_flag(value, argument):
    """Validates a boolean argument and returns it.

    Args:
        value: what the user passed.
        argument: the argument's name, used in the message.

    Returns:
        `value`, a `bool`.

    Raises:
        ValueError: if `value` is not `True` or `False` (a string such as
            `"yes"` or a number would be silently truthy).
    """
    if not isinstance(value, bool):
        raise ValueError(
            f"`{argument}` must be True or False, but received {value!r} of "
            f"type {type(value).__name__}. Pass {argument}=True or "
            f"{argument}=False."
        )
    return value


def check_numbers(values, argument, count, counted, minimum=0.0):
    """Validates a list of `count` finite numbers >= `minimum`, one per item.

    Args:
        values: a number or a list of numbers.
        argument: the argument's name, used in messages.
        count: how many there must be.
        counted: what each number belongs to, plural (e.g. `"teachers"`).
        minimum: the smallest allowed value.

    Returns:
        A list of Python floats.

    Raises:
        ValueError: if the count differs or a value is invalid.
    """
    if not isinstance(values, (list, tuple)):
        values = [values]
    if len(values) != count:
        raise ValueError(
            f"`{argument}` has {len(values)} entries but there are {count} "
            f"{counted}. Pass one value per item of {counted}, in order."
        )
    return [
        check_number(v, f"{argument}[{i}]", minimum=minimum)
        for i, v in enumerate(values)
    ]


def check_model(model, argument):
    """Raises unless `model` is a `keras.Model` that is not a Distiller."""
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"`{argument}` must be a keras.Model, but received "
            f"{type(model).__name__}: {model!r}. Wrap your network in a "
            f"keras.Model (Functional, Sequential or a subclass)."
        )
    if is_distiller(model):
        raise ValueError(
            f"`{argument}` is a Distiller ('{model.name}'), not a trained model: "
            f"its outputs are its student's, and it carries its own teacher. "
            f"Pass `distiller.student` (or the student's .keras file) instead."
        )


def check_built(model, argument, why, refuse=True):
    """Refuses (or warns about) a model that is not built: it has no weights
    yet, so it was never trained or loaded, and its first call would give it
    random ones.

    Args:
        model: a `keras.Model`.
        argument: its name in the call, e.g. `"teacher"`.
        why: what would go wrong, for the message.
        refuse: raise; else warn (`keras.distillation` accepts an unbuilt
            teacher, and programs written for it must run unchanged).

    Raises:
        ValueError: if `model` is not built and `refuse` is true.
    """
    if model.built:
        return
    message = (f"The {argument} '{model.name}' is not built: it has no weights yet, so it was never "
               f"trained or loaded, and {why}. Pass the trained model (one that has been fit, "
               f"loaded, or called on a batch).")
    if refuse:
        raise ValueError(message)
    warnings.warn(message, stacklevel=3)


def is_distiller(model):
    """Whether `model` is a Distiller (keras_kd's or `keras.distillation`'s),
    recognized without importing either: it holds a `student` model."""
    return type(model).__name__ == "Distiller" and isinstance(
        getattr(model, "student", None), keras.Model)


def check_dense_inputs(data, model):
    """Raises if `data`'s inputs hold ragged tensors but `model` takes dense ones.

    A dense layer fed rows of different lengths fails deep in the graph
    (`RaggedMatMul` assertion); this names the problem before the first step.

    Args:
        data: what `fit`/`evaluate` received as `x` (tensors, arrays or a
            `tf.data.Dataset`, whose inputs are its elements' first part).
        model: the student (or any model with symbolic `inputs`).

    Raises:
        ValueError: naming the model's input shapes and how to pad.
    """
    import tensorflow as tf

    if isinstance(data, tf.data.Dataset):
        data = data.element_spec
        data = data[0] if isinstance(data, tuple) else data
    ragged = [leaf for leaf in tf.nest.flatten(data)
              if isinstance(leaf, (tf.RaggedTensor, tf.RaggedTensorSpec))]
    inputs = keras.tree.flatten(getattr(model, "inputs", None) or [])
    if ragged and inputs and not any(getattr(i, "ragged", False) for i in inputs):
        shapes = [tuple(i.shape) for i in inputs]
        raise ValueError(
            f"The inputs are ragged (rows of different lengths, e.g. {ragged[0].shape}), but "
            f"the student '{model.name}' takes dense inputs of shape {shapes[0] if len(shapes) == 1 else shapes}. "
            f"Pad the rows to one length first, e.g. x.to_tensor() or "
            f"keras.utils.pad_sequences(rows, dtype='float32')."
        )


def check_labels(x, y, loss, student):
    """Raises before the first step for labels the hard-label loss cannot read.

    Checked where it is known without reading the data (arrays, and a
    `tf.data.Dataset`'s element spec): string labels, one-hot labels with a
    sparse loss and class ids with a categorical one, which Keras reports
    as a dtype or a rank mismatch without saying which side is wrong.

    Args:
        x: `fit`'s `x` (a dataset yields `(x, y, ...)` tuples).
        y: `fit`'s `y`, or `None`.
        loss: the compiled hard-label loss (object, name or function).
        student: the student, for its class count.

    Raises:
        ValueError: saying what the labels are and how to convert them.
    """
    import numpy as np
    import tensorflow as tf

    if isinstance(x, tf.data.Dataset) and y is None:
        spec = x.element_spec
        y = spec[1] if isinstance(spec, tuple) and len(spec) > 1 else None
    if y is None or loss is None or isinstance(y, dict):
        return
    if isinstance(y, (list, tuple)):
        y = np.asarray(y)
    dtype, shape = getattr(y, "dtype", None), getattr(y, "shape", None)
    if dtype is None or shape is None:
        return
    first = y.reshape(-1)[0] if isinstance(y, np.ndarray) and y.size else None
    if isinstance(dtype, np.dtype):
        strings = dtype.kind in "US" or dtype.kind == "O" and isinstance(first, (str, bytes))
    else:
        strings = tf.as_dtype(dtype) == tf.string
    if strings:
        example = f" (e.g. {str(first)!r:.30})" if first is not None else ""
        raise ValueError(
            f"The labels `y` are strings{example}, but the hard-label loss needs class ids "
            f"(integers 0..classes-1) or one-hot rows; the inputs are not the problem. Map the "
            f"labels to ids first, e.g. np.unique(y, return_inverse=True)[1] or "
            f"keras.layers.StringLookup(num_oov_indices=0, vocabulary=classes)(y)."
        )
    name = getattr(loss, "name", None) or getattr(loss, "__name__", None) or (
        loss if isinstance(loss, str) else "")
    outputs = keras.tree.flatten(getattr(student, "outputs", None) or [])
    classes = outputs[0].shape[-1] if len(outputs) == 1 and len(outputs[0].shape) == 2 else None
    shape = tuple(shape)
    if name == "sparse_categorical_crossentropy" and classes and classes > 1 and len(shape) == 2 \
            and shape[-1] == classes:
        raise ValueError(
            f"The labels have shape {shape}: one-hot rows of {classes} classes, but the loss "
            f"'{name}' takes class ids of shape (samples,). Pass y.argmax(-1), or compile with "
            f"keras.losses.CategoricalCrossentropy for one-hot labels."
        )
    if name == "categorical_crossentropy" and classes and classes > 1 and (
            len(shape) == 1 or len(shape) == 2 and shape[-1] == 1):
        raise ValueError(
            f"The labels have shape {shape}: class ids, but the loss '{name}' takes one-hot rows "
            f"of shape (samples, {classes}). Compile with keras.losses.SparseCategoricalCrossentropy "
            f"for class ids, or pass keras.utils.to_categorical(y, {classes})."
        )


def check_validation_labels(x, y, validation_data):
    """Raises if the training data has labels but `validation_data` has none.

    Keras would validate on inputs alone without a word: no hard-label
    loss, no accuracy, only the distillation terms.

    Args:
        x, y: `fit`'s training data.
        validation_data: `fit`'s `validation_data`.

    Raises:
        ValueError: saying what to pass.
    """
    if validation_data is None or _labelled(x, y) is not True or _labelled(validation_data) is not False:
        return
    raise ValueError(
        f"validation_data holds inputs only ({type(validation_data).__name__}, no labels), but the "
        f"training data has labels: the validation hard-label loss and metrics would be left out "
        f"without a word. Pass validation_data=(x_val, y_val), or a dataset of (x, y) batches."
    )


def _labelled(data, y=None):
    """True/False if `data` (with `y`) is known to carry labels or not; None if unknown."""
    import numpy as np
    import tensorflow as tf

    if y is not None:
        return True
    if isinstance(data, tf.data.Dataset):
        spec = data.element_spec
        return isinstance(spec, tuple) and len(spec) > 1 and spec[1] is not None
    if isinstance(data, tuple):
        return len(data) > 1 and data[1] is not None
    if isinstance(data, (np.ndarray, dict, tf.Tensor)):
        return False
    return None  # a PyDataset, a generator: not read here


def check_separate_models(teachers, student):
    """Raises if the student is a teacher or shares weights with one.

    A teacher is frozen; weights it shares with the student would be frozen
    too, or (the same model passed twice) the student would not train.
    """
    student_weights = {id(v) for v in student.weights}
    for teacher in teachers:
        if teacher is student:
            raise ValueError(
                f"The teacher and the student are the same model "
                f"('{student.name}'): the teacher is frozen, so nothing would "
                f"train. Pass a separate student, e.g. a smaller model or "
                f"keras.models.clone_model(teacher)."
            )
        shared = [v.path for v in teacher.weights if id(v) in student_weights]
        if shared:
            raise ValueError(
                f"The student '{student.name}' shares {len(shared)} weights "
                f"with the teacher '{teacher.name}' (e.g. {shared[:3]}): the "
                f"teacher is frozen, which would freeze them in the student "
                f"too. Build the student from its own layers."
            )


def check_trainable(student):
    """Raises if the student is frozen or, once built, has no trainable
    weights (an unbuilt model gets its weights at its first call)."""
    if not student.trainable or (student.built and not student.trainable_weights):
        raise ValueError(
            f"The student '{student.name}' has no trainable weights "
            f"(student.trainable is {student.trainable}; {len(student.weights)} "
            f"weights in all), so distillation would change nothing. Set "
            f"student.trainable = True, or unfreeze the layers to train."
        )


def check_same_inputs(teacher, student, input_shapes):
    """Raises if teacher and student take inputs of different shapes.

    Args:
        teacher: the teacher model.
        student: the student model.
        input_shapes: `model -> [shape without batch axis] or None`.
    """
    teacher_shapes = input_shapes(teacher)
    student_shapes = input_shapes(student)
    if teacher_shapes is None or student_shapes is None:
        return
    if len(teacher_shapes) != len(student_shapes) or not all(
        _compatible(t, s) for t, s in zip(teacher_shapes, student_shapes)
    ):
        raise ValueError(
            f"Teacher and student receive the same batches, but the teacher "
            f"takes inputs of shape {teacher_shapes} and the student "
            f"{student_shapes} (batch axis left out). Build both models on "
            f"the same input shape."
        )


def _compatible(shape_a, shape_b):
    return len(shape_a) == len(shape_b) and all(
        a is None or b is None or a == b for a, b in zip(shape_a, shape_b)
    )


def check_scalar(value, loss, term):
    """Raises unless a loss returned a scalar."""
    shape = tuple(getattr(value, "shape", ()))
    if shape:
        raise ValueError(
            f"Distillation loss '{term}' ({type(loss).__name__}) returned a "
            f"tensor of shape {shape}, but compute_loss() must return a "
            f"scalar. Reduce it, e.g. with keras.ops.mean(...)."
        )



def moved_attributes(module_name, moved):
    """A module `__getattr__` that serves names which moved, with a
    DeprecationWarning saying where they are now.

    Args:
        module_name: the module's `__name__`.
        moved: `{old name: (message, load)}`: the warning's text and a
            function of no arguments that returns the object.

    Returns:
        The `__getattr__` function (PEP 562).

    Example:

    ```python
    __getattr__ = moved_attributes(__name__, {"OLD": ("OLD moved to pkg.NEW.", lambda: NEW)})
    ```
    """
    def __getattr__(name):
        if name not in moved:
            raise AttributeError(f"module {module_name!r} has no attribute {name!r}")
        import warnings

        message, load = moved[name]
        warnings.warn(message, DeprecationWarning, stacklevel=2)
        return load()

    return __getattr__

__all__ = [
    "moved_attributes",
    "MAX_TEMPERATURE",
    "as_float",
    "check_built",
    "check_count",
    "check_dense_inputs",
    "check_flag",
    "check_labels",
    "check_model",
    "check_number",
    "check_numbers",
    "check_same_inputs",
    "check_scalar",
    "check_separate_models",
    "check_temperature",
    "check_texts",
    "check_trainable",
    "check_validation_labels",
    "is_distiller",
    "is_whole_number",
]
