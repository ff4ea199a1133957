"""Layer paths -> one pass of a model that returns its output and its taps.

A `ModelView` runs a model exactly once and hands back, besides the final
output, the outputs of the layers the losses asked for. A tap is recorded by
wrapping the layer's `call` for the duration of that one call, so the same
mechanism reaches top-level layers, layers inside nested sub-models
(`"backbone/block3"`, any depth) and layers of subclassed models, without
running anything twice and without changing the model.
"""

import contextlib

import keras
import tensorflow as tf
from keras import ops

OUTPUT = "output"
LOGITS = "logits"
FINAL_OUTPUT = "<final output>"
"""Layer name meaning "the model's final output" (`None` means it too)."""


class ModelView:
    """Runs a model once; returns its final output, logits and taps.

    Args:
        model: a `keras.Model` (Functional, Sequential or subclassed).
        layer_paths: `{path: argument}`: the layer paths to tap, each with the
            argument it came from (used in error messages).
        role: `"teacher"` or `"student"`, for messages.

    Raises:
        ValueError: if a path does not name a layer of the model.

    Example:

    ```python
    view = ModelView(model, {"backbone/block3": "teacher_layer_name"})
    outputs = view(x, training=False)  # {"output", "logits", "backbone/block3"}
    ```
    """

    def __init__(self, model, layer_paths=None, role="model"):
        self.model = model
        self.role = role
        self.layers = {
            path: resolve_layer(model, path, argument, role)
            for path, argument in (layer_paths or {}).items()
        }
        self.outputs_probabilities = ends_with_softmax(model)

    def __call__(self, x, training):
        records = {path: [] for path in self.layers}
        with _recording(self.layers, records):
            output = self.model(x, training=training)
        outputs = {OUTPUT: output}
        for path, recorded in records.items():
            if len(recorded) != 1:
                raise ValueError(
                    f"Layer '{path}' of {self.role} '{self.model.name}' ran "
                    f"{len(recorded)} times in one forward pass, so its "
                    f"output is ambiguous. Tap a layer that runs exactly once."
                )
            outputs[path] = recorded[0]
        outputs[LOGITS] = (
            keras.tree.map_structure(log_probabilities, output)
            if self.outputs_probabilities
            else output
        )
        return outputs

    def output_spec(self):
        """`tf.TensorSpec`s of what `__call__` returns, or `None` if unknown.

        Unknown when the model has no known input shape (a subclassed model
        that was never called).
        """
        input_spec = _input_spec(self.model)
        if input_spec is None:
            return None
        traced = tf.function(lambda x: self(x, training=False), autograph=False)
        outputs = traced.get_concrete_function(input_spec).structured_outputs
        return keras.tree.map_structure(
            lambda t: tf.TensorSpec(t.shape, t.dtype), outputs
        )


class EnsembleView:
    """Several teachers, each run once: a `ModelView` per teacher, merged.

    Final outputs and logits come as lists (one entry per teacher, in
    order); taps are keyed `"<teacher name>/<path>"`.

    Args:
        models: the teachers; their names must differ.
        layer_paths: `{path: argument}`, each path starting with a teacher's
            name.

    Raises:
        ValueError: if names repeat or a path names no teacher.
    """

    def __init__(self, models, layer_paths=None):
        names = [model.name for model in models]
        if len(set(names)) != len(names):
            raise ValueError(
                f"Teachers must have different names, so that their layers "
                f"can be named, but received {names}. Pass name=... when "
                f"building each teacher."
            )
        per_teacher = {name: {} for name in names}
        for path, argument in (layer_paths or {}).items():
            head, _, rest = path.partition("/")
            if head not in per_teacher or not rest:
                raise ValueError(
                    f"With several teachers, `{argument}='{path}'` must start "
                    f"with the name of the teacher to tap, as "
                    f"'<teacher>/<layer>'. Teachers: {names}."
                )
            per_teacher[head][rest] = argument
        self.views = [
            ModelView(model, per_teacher[model.name], "teacher") for model in models
        ]

    def __call__(self, x, training):
        return self._merge([view(x, training=training) for view in self.views])

    def output_spec(self):
        specs = [view.output_spec() for view in self.views]
        return None if any(spec is None for spec in specs) else self._merge(specs)

    def _merge(self, per_teacher):
        merged = {OUTPUT: [], LOGITS: []}
        for view, outputs in zip(self.views, per_teacher):
            outputs = dict(outputs)
            merged[OUTPUT].append(outputs.pop(OUTPUT))
            merged[LOGITS].append(outputs.pop(LOGITS))
            merged.update({f"{view.model.name}/{k}": v for k, v in outputs.items()})
        return merged


@contextlib.contextmanager
def _recording(layers, records):
    """Wraps each layer's `call` so that its outputs land in `records`."""
    originals = {}
    for path, layer in layers.items():
        original = layer.call

        def recorder(*args, _original=original, _record=records[path], **kwargs):
            result = _original(*args, **kwargs)
            _record.append(result)
            return result

        originals[path] = (layer, "call" in vars(layer), original)
        object.__setattr__(layer, "call", recorder)
    try:
        yield
    finally:
        for layer, had_own_call, original in originals.values():
            if had_own_call:
                object.__setattr__(layer, "call", original)
            else:
                object.__delattr__(layer, "call")


def resolve_layer(model, path, argument="layer_name", role="model"):
    """Finds the layer at a `"parent/child"` path inside `model`.

    Args:
        model: the model to search.
        path: layer names joined by `/`, one per level of nesting.
        argument: the argument the path came from, for messages.
        role: `"teacher"` or `"student"`, for messages.

    Returns:
        The `keras.layers.Layer` at `path`.

    Raises:
        ValueError: naming the first part of the path that does not exist and
            the layers available at that level.
    """
    current, walked = model, []
    for name in path.split("/"):
        children = getattr(current, "layers", None)
        if not children:
            raise ValueError(
                f"`{argument}='{path}'`: '{'/'.join(walked)}' of {role} "
                f"'{model.name}' is a {type(current).__name__}, which has no "
                f"sub-layers, so '{name}' cannot be inside it. Pass a path "
                f"that stops at '{'/'.join(walked)}'."
            )
        match = [layer for layer in children if layer.name == name]
        if not match:
            where = f"'{'/'.join(walked)}'" if walked else f"{role} '{model.name}'"
            raise ValueError(
                f"`{argument}='{path}'`: '{name}' is not a layer of {where}. "
                f"Available: {[layer.name for layer in children]}. Pass one "
                f"of these, or a 'parent/child' path into a nested model."
            )
        current = match[0]
        walked.append(name)
    return current


def _input_spec(model):
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        inputs = None
    if inputs:
        specs = [tf.TensorSpec(i.shape, i.dtype) for i in inputs]
        return specs[0] if len(specs) == 1 else specs
    shape = (model.get_build_config() or {}).get("input_shape")
    if shape is None or not isinstance(shape, (list, tuple)):
        return None
    return tf.TensorSpec((None,) + tuple(shape[1:]), "float32")


def log_probabilities(probabilities):
    """log(p) in float32, floored at the smallest normal float32."""
    probabilities = ops.cast(probabilities, "float32")
    return ops.log(ops.maximum(probabilities, 1.1754944e-38))


def ends_with_softmax(model):
    """Whether every final output of a Functional/Sequential model is softmax.

    Subclassed models have no graph to inspect: their outputs are taken to be
    logits.
    """
    try:
        outputs = model.outputs
    except (AttributeError, ValueError):
        return False
    if not outputs:
        return False
    return all(_is_softmax(o._keras_history.operation) for o in outputs)


def _is_softmax(layer):
    if isinstance(layer, keras.layers.Softmax):
        return True
    return getattr(layer, "activation", None) is keras.activations.softmax
