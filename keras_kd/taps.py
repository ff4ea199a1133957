"""Views: one call of a model -> its output, its logits and its taps.

A `ModelView` runs a model exactly once and hands back, in separate fields,
the model's final output, its logits and the outputs of the layers the losses
asked for (`ViewOutputs`). A tap is recorded by wrapping the layer's `call`
for the duration of that one call, so the same mechanism reaches top-level
layers, layers inside nested sub-models (`"backbone/block3"`, any depth) and
layers of subclassed models, without running anything twice.

Logits are what the model computes before its final softmax. Where the model
ends in a softmax, at any depth of nesting and in any spelling (a `Softmax`
layer, `activation="softmax"` or `tf.nn.softmax` on any layer, `Lambda`, or
`keras.ops.softmax` in a Functional graph), the logits are read from the
input of that softmax during the same call, upcast to float32: exact, and
immune to float16 underflow of the probabilities. Where no softmax can be
seen in the graph (a subclassed model), a probe at construction checks
whether the outputs are probabilities (non-negative rows summing to 1); if
so, `log(p)` stands in for the logits with a warning, and float16
probabilities are refused.
"""

import typing
import warnings

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_kd import _keras_compat

FINAL_OUTPUT = "<final output>"
"""Layer name meaning "the model's final output" (`None` means it too)."""

SOFTMAX_FUNCTIONS = frozenset(
    {keras.activations.softmax, keras.ops.softmax, tf.nn.softmax}
)


class ViewOutputs(typing.NamedTuple):
    """What one call of a model gives the losses.

    Attributes:
        output: the model's final output, as the model returns it.
        logits: the logits behind it (same structure): the output itself,
            or the input of the model's final softmax in float32, or
            `log(probabilities)` for a model that returns probabilities
            without a visible softmax.
        taps: `{layer path: output of that layer}`. A layer may be named
            anything, including `output` or `logits`.
    """

    output: typing.Any
    logits: typing.Any
    taps: dict


class ModelView:
    """Runs a model once; returns its output, logits and taps.

    Args:
        model: a `keras.Model` (Functional, Sequential or subclassed).
        layer_paths: `{path: argument}`: the layer paths to tap, each with the
            argument it came from (used in error messages).
        role: `"teacher"` or `"student"`, for messages.

    Raises:
        ValueError: if a path does not name a layer of the model, or the
            model returns float16 probabilities with no softmax to read the
            logits from.

    Example:

    ```python
    view = ModelView(model, {"backbone/block3": "teacher_layer_name"})
    outputs = view(x, training=False)  # outputs.taps["backbone/block3"]
    ```
    """

    def __init__(self, model, layer_paths=None, role="model"):
        self.model = model
        self.role = role
        self.layers = {
            path: resolve_layer(model, path, argument, role)
            for path, argument in (layer_paths or {}).items()
        }
        self.softmax_sites = find_softmax(model)
        self.probabilities_as_logits = _probe_probabilities(
            model, self.softmax_sites, role
        )

    def __call__(self, x, training):
        tapped = {path: [] for path in self.layers}
        logits = []
        replacements = _recorders(self.layers, tapped, self.softmax_sites, logits)
        with _keras_compat.replaced_calls(replacements):
            output = self.model(x, training=training)
        taps = {path: self._single(path, records) for path, records in tapped.items()}
        return ViewOutputs(output, self._logits(output, logits), taps)

    def output_spec(self):
        """`tf.TensorSpec`s of what `__call__` returns, or `None` if unknown.

        Unknown when the model has no known input shape (a subclassed model
        that was never called).
        """
        input_spec = input_signature(self.model)
        if input_spec is None:
            return None
        traced = tf.function(lambda x: self(x, training=False), autograph=False)
        outputs = traced.get_concrete_function(input_spec).structured_outputs
        return keras.tree.map_structure(
            lambda t: tf.TensorSpec(t.shape, t.dtype), outputs
        )

    def _single(self, path, records):
        if len(records) != 1:
            raise ValueError(
                f"Layer '{path}' of {self.role} '{self.model.name}' ran "
                f"{len(records)} times in one forward pass, so its output is "
                f"ambiguous. Tap a layer that runs exactly once."
            )
        return records[0]

    def _logits(self, output, recorded):
        leaves = keras.tree.flatten(output)
        for index, (_, how) in enumerate(self.softmax_sites or ()):
            if how in _SOFTMAX:
                leaves[index] = ops.cast(
                    self._single(f"<softmax of output {index}>", recorded[index]),
                    "float32",
                )
        for index, is_probability in enumerate(self.probabilities_as_logits):
            if is_probability:
                leaves[index] = log_probabilities(leaves[index])
        return keras.tree.pack_sequence_as(output, leaves)


class EnsembleView:
    """Several teachers, each run once: a `ModelView` per teacher, merged.

    Outputs and logits come as lists (one entry per teacher, in order); taps
    are keyed `"<teacher name>/<path>"`.

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
        taps = {
            f"{view.model.name}/{path}": value
            for view, outputs in zip(self.views, per_teacher)
            for path, value in outputs.taps.items()
        }
        return ViewOutputs(
            [outputs.output for outputs in per_teacher],
            [outputs.logits for outputs in per_teacher],
            taps,
        )


def view(models, layer_paths=None, role="teacher"):
    """The view that runs one model, or several teachers, once per call.

    Args:
        models: a list of models: one gives a `ModelView`, several an
            `EnsembleView` (teachers).
        layer_paths: `{path: argument}`: the layer paths to tap.
        role: `"teacher"` or `"student"`, for messages.

    Returns:
        A `ModelView` or an `EnsembleView`.

    Raises:
        ValueError: as `ModelView` and `EnsembleView`.
    """
    if len(models) == 1:
        return ModelView(models[0], layer_paths, role)
    return EnsembleView(models, layer_paths)


def _recorders(layers, tapped, softmax_sites, logits):
    """`{layer: call}` replacements that record taps and softmax inputs."""
    plans = {}

    def plan(layer):
        return plans.setdefault(id(layer), {"layer": layer, "outputs": [], "site": None})

    for path, layer in layers.items():
        plan(layer)["outputs"].append(tapped[path])
    for operation, how in softmax_sites or ():
        if how in _SOFTMAX:
            logits.append([])
            entry = plan(operation)
            if entry["site"] is not None:
                raise ValueError(
                    f"Layer '{operation.name}' produces several final "
                    f"outputs; keras_kd cannot tell their logits apart. Give "
                    f"each output its own softmax layer."
                )
            entry["site"] = (how, logits[-1])
        else:
            logits.append(None)
    return {entry["layer"]: _recorder(**entry) for entry in plans.values()}


def _recorder(layer, outputs, site):
    """A replacement of `layer.call` that records what the plan asks for."""
    original = layer.call
    how, logits = site if site is not None else (None, None)

    def call(*args, **kwargs):
        if how == "activation":
            # Run the layer without its softmax, keep the logits, then apply
            # the softmax itself: the same output, and the logits exactly.
            activation = layer.activation
            object.__setattr__(layer, "activation", keras.activations.linear)
            try:
                pre_activation = original(*args, **kwargs)
            finally:
                object.__setattr__(layer, "activation", activation)
            logits.append(pre_activation)
            result = activation(pre_activation)
        else:
            result = original(*args, **kwargs)
            if how == "input":
                logits.append(args[0] if args else kwargs["inputs"])
        for record in outputs:
            record.append(result)
        return result

    return call


def find_softmax(model):
    """Where each final output of a model applies its softmax.

    Follows the graph of Functional and Sequential models through nested
    models of any depth.

    Args:
        model: a `keras.Model`.

    Returns:
        `None` for a model without a symbolic graph (subclassed), else a list
        with one `(operation, how)` per output leaf. `how` is `"input"` when
        the operation (a `Softmax` layer, a softmax `Lambda`, a
        `keras.ops.softmax`) is the softmax itself; `"activation"` when the
        layer applies softmax as its activation (`Dense(...,
        activation="softmax")`); `"none"` when it is a built-in Keras layer
        that applies none; `"unknown"` when the graph cannot tell (a custom
        layer, a `Lambda` of another function, a subclassed sub-model).
    """
    outputs = symbolic_outputs(model)
    if outputs is None:
        return None
    return [_softmax_site(tensor) for tensor in outputs]


def ends_with_softmax(model):
    """Whether every final output of a model is a softmax seen in its graph."""
    sites = find_softmax(model)
    return bool(sites) and all(how in _SOFTMAX for _, how in sites)


_SOFTMAX = ("input", "activation")


def _softmax_site(tensor):
    operation, _, index = _keras_compat.keras_history(tensor)
    if isinstance(operation, keras.Model):
        inner = symbolic_outputs(operation)
        return (operation, "unknown") if inner is None else _softmax_site(inner[index])
    if isinstance(operation, (keras.layers.Softmax, _keras_compat.SoftmaxOperation)):
        return (operation, "input" if _last_axis(operation, tensor) else "unknown")
    if isinstance(operation, keras.layers.Lambda):
        return (operation, "input" if operation.function in SOFTMAX_FUNCTIONS else "unknown")
    activation = getattr(operation, "activation", None)
    if activation in SOFTMAX_FUNCTIONS:
        return (operation, "activation")
    built_in = _keras_compat.defined_by_keras(type(operation)) and (
        activation is None or _keras_compat.defined_by_keras(activation)
    )
    return (operation, "none" if built_in else "unknown")


def _last_axis(operation, tensor):
    axis = getattr(operation, "axis", -1)
    axis = axis[0] if isinstance(axis, (list, tuple)) and len(axis) == 1 else axis
    return isinstance(axis, int) and axis in (-1, len(tensor.shape) - 1)


def symbolic_outputs(model):
    """The flat list of a Functional/Sequential model's symbolic outputs,
    or `None` for a model without a graph."""
    try:
        outputs = model.outputs
    except (AttributeError, ValueError):
        return None
    return list(outputs) if outputs else None


def _probe_probabilities(model, softmax_sites, role):
    """For output leaves the graph cannot account for: are they probabilities?

    Runs the model once, in inference mode, on a small synthetic batch, only
    when some output is "unknown" (see `find_softmax`). Returns one bool per
    output leaf (empty when the model cannot be probed: no known input).
    """
    if softmax_sites is not None:
        unknown = [how == "unknown" for _, how in softmax_sites]
        if not any(unknown):
            return [False] * len(softmax_sites)
    signature = input_signature(model)
    if signature is None:
        warnings.warn(
            f"The outputs of {role} '{model.name}' cannot be checked for "
            f"probabilities: it has no known input shape (a subclassed model "
            f"never called), so they are taken to be logits. If it ends in a "
            f"softmax, call it on a batch once before building the Distiller "
            f"(then keras_kd checks), or return logits.",
            stacklevel=4,
        )
        return []
    output = model(synthetic_batch(signature), training=False)
    found = []
    for index, leaf in enumerate(keras.tree.flatten(output)):
        found.append(
            (softmax_sites is None or unknown[index]) and _are_probabilities(leaf)
        )
        if found[-1]:
            _warn_probabilities(model, role, index, leaf.dtype)
    return found


def _are_probabilities(values):
    tolerance = 1e-2 if "float16" in str(values.dtype) else 1e-3
    values = np.asarray(keras.ops.convert_to_numpy(values), "float64")
    if values.ndim < 2 or values.shape[-1] < 2 or not np.all(np.isfinite(values)):
        return False
    return bool(
        np.all(values >= 0) and np.all(np.abs(values.sum(-1) - 1.0) < tolerance)
    )


def _warn_probabilities(model, role, index, dtype):
    advice = (
        "Return logits from the model (drop its final softmax; train it with "
        "from_logits=True) and keras_kd distils them exactly."
    )
    if "float16" in str(dtype):
        raise ValueError(
            f"Output {index} of {role} '{model.name}' holds probabilities "
            f"(its rows are non-negative and sum to 1) in float16, and no "
            f"softmax layer can be seen to read the logits from: float16 "
            f"probabilities below ~6e-8 are 0, so the distillation loss "
            f"would be wrong. {advice}"
        )
    warnings.warn(
        f"Output {index} of {role} '{model.name}' holds probabilities (its "
        f"rows are non-negative and sum to 1) and no softmax layer can be "
        f"seen to read the logits from: keras_kd distils from log(p), which "
        f"loses precision where p underflows. {advice}",
        stacklevel=4,
    )


def input_signature(model):
    """`tf.TensorSpec`s of a model's inputs, in the model's own structure
    (dict inputs stay dicts), or `None` when unknown."""
    try:
        inputs = model.input
    except (AttributeError, ValueError):
        inputs = None
    if inputs is not None:
        return keras.tree.map_structure(
            lambda i: tf.TensorSpec(i.shape, i.dtype), inputs
        )
    shape = (model.get_build_config() or {}).get("input_shape")
    if shape is None or not isinstance(shape, (list, tuple)):
        return None
    if not all(d is None or isinstance(d, int) for d in shape):
        return None  # several inputs: their structure is unknown
    return tf.TensorSpec((None,) + tuple(shape[1:]), "float32")


def input_shapes(model):
    """Shapes (without the batch axis) of a model's inputs, else `None`."""
    signature = input_signature(model)
    if signature is None:
        return None
    return [tuple(spec.shape[1:]) for spec in keras.tree.flatten(signature)]


def synthetic_batch(signature, batch_size=2, length=8, seed=0):
    """A small batch matching `signature`: uniform floats in [0, 1), ones for
    integer inputs (token ids, masks), `length` for unknown dimensions."""
    rng = np.random.default_rng(seed)

    def make(spec):
        shape = [batch_size] + [length if d is None else d for d in spec.shape[1:]]
        if spec.dtype.is_floating:
            return rng.uniform(size=shape).astype(spec.dtype.as_numpy_dtype)
        return np.ones(shape, spec.dtype.as_numpy_dtype)

    return keras.tree.map_structure(make, signature)


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


def log_probabilities(probabilities):
    """log(p) in float32, floored at the smallest normal float32."""
    probabilities = ops.cast(probabilities, "float32")
    return ops.log(ops.maximum(probabilities, 1.1754944e-38))


__all__ = [
    "FINAL_OUTPUT",
    "SOFTMAX_FUNCTIONS",
    "EnsembleView",
    "ModelView",
    "ViewOutputs",
    "ends_with_softmax",
    "find_softmax",
    "input_shapes",
    "input_signature",
    "log_probabilities",
    "resolve_layer",
    "symbolic_outputs",
    "synthetic_batch",
    "view",
]
