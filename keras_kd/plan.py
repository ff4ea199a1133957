"""Feature pairs planned from the graphs: which teacher and student layers to match.

`FeaturePlan(teacher, student)` reads the symbolic graphs of two Functional or
Sequential models (nested models included; nothing is run) and proposes one
`FeatureDistillation` per stage the two models share.

The rule, in three steps:

1. **Main path.** The graphs are flattened (a nested model's layers are
   reached as `"parent/child"`, the paths the Distiller's taps accept) and
   only the layers that *every* path from the inputs to the outputs goes
   through are kept: block outputs of residual networks, not the layers
   inside a residual branch or a squeeze-and-excitation side branch.
2. **Stages.** Along the main path, a stage is a run of feature maps —
   `(batch, steps, channels)` or `(batch, height, width, channels)` — of one
   spatial (or sequence) size; a stage ends where the size changes, and its
   feature is the output of its **last** layer. Zero-padding layers do not
   start a stage (they only prepare the next convolution), a stage in which
   no layer has weights is not a feature (e.g. a `Rescaling` of the input),
   and the feature part ends at the first global pooling or output of rank
   2 after the first feature map (the classifier head).
3. **Pairs and connectors.** Teacher and student stages are paired **by
   resolution**: the k-th teacher stage of size `s` with the k-th student
   stage of size `s`. Stages of a size only one model has are left out, not
   paired across resolutions (they are listed in the plan). Each pair gets
   the connector `projection="auto"` builds: none when the shapes match, a
   1x1 convolution (`Dense` for vectors) when the channel counts differ.
"""

import typing

import keras

from keras_kd import _keras_compat, connectors
from keras_kd.losses.features import FeatureDistillation
from keras_kd.taps import symbolic_outputs

_PADDING = (keras.layers.ZeroPadding1D, keras.layers.ZeroPadding2D, keras.layers.ZeroPadding3D)
_GLOBAL_POOLING = (
    keras.layers.GlobalAveragePooling1D, keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalAveragePooling3D, keras.layers.GlobalMaxPooling1D,
    keras.layers.GlobalMaxPooling2D, keras.layers.GlobalMaxPooling3D,
)
_SOURCE = -1  # the models' inputs, in the flattened graph


class Stage(typing.NamedTuple):
    """One stage of a model: a run of feature maps of one resolution.

    Attributes:
        resolution: the spatial size, `(steps,)` or `(height, width)`.
        layer: the path of the stage's last layer (`"parent/child"` in
            nested models).
        shape: that layer's output shape, batch axis included.
    """

    resolution: tuple
    layer: str
    shape: tuple


class FeaturePair(typing.NamedTuple):
    """One proposed teacher/student pair.

    Attributes:
        resolution: the spatial size both features have.
        teacher_layer: the teacher layer's path.
        student_layer: the student layer's path.
        teacher_shape: the teacher feature's shape, batch axis included.
        student_shape: the student feature's shape, batch axis included.
        connector: what `projection="auto"` builds to map the student
            feature to the teacher's, in words (`"none"` when the shapes
            match).
    """

    resolution: tuple
    teacher_layer: str
    student_layer: str
    teacher_shape: tuple
    student_shape: tuple
    connector: str


class FeaturePlan:
    """Teacher/student feature pairs proposed stage by stage from the graphs.

    See the module docstring for the rule. Only the symbolic graphs are read
    (no forward pass), so the models need a fixed input size.

    Args:
        teacher: a Functional or Sequential `keras.Model`.
        student: a Functional or Sequential `keras.Model`.

    Attributes:
        pairs: the `FeaturePair`s, shallowest first.
        teacher_stages: the teacher's `Stage`s, shallowest first.
        student_stages: the student's `Stage`s, likewise.

    Raises:
        ValueError: if a model has no symbolic graph (subclassed), its
            feature maps never change resolution, their size is unknown, or
            the two models share no resolution.

    Example:

    ```python
    plan = keras_kd.FeaturePlan(teacher, student)
    print(plan.table())
    distiller = keras_kd.Distiller(teacher, student, plan.losses())
    ```
    """

    def __init__(self, teacher, student):
        self.teacher_stages = stages(teacher, "teacher")
        self.student_stages = stages(student, "student")
        teacher_keys, student_keys = _keyed(self.teacher_stages), _keyed(self.student_stages)
        self.pairs = [
            _pair(teacher_keys[key], student_keys[key])
            for key in student_keys if key in teacher_keys
        ]
        if not self.pairs:
            raise ValueError(
                f"Teacher '{teacher.name}' and student '{student.name}' have no "
                f"stage of the same resolution: teacher "
                f"{_resolutions(self.teacher_stages)}, student "
                f"{_resolutions(self.student_stages)}. Give both models the same "
                f"input size, or pair layers yourself with "
                f"FeatureDistillation(teacher_layer_name=..., "
                f"student_layer_name=..., projection='auto')."
            )

    def losses(self):
        """One `FeatureDistillation` per pair, ready for `Distiller(...)`.

        Each compares the pair with `loss="mse"` (FitNets' hint) through
        `projection="auto"`, and is logged as `features_<resolution>`.

        Returns:
            A list of `keras_kd.FeatureDistillation`.
        """
        return [
            FeatureDistillation(
                loss="mse",
                teacher_layer_name=pair.teacher_layer,
                student_layer_name=pair.student_layer,
                projection="auto",
                name=name,
            )
            for pair, name in zip(self.pairs, _unique(
                f"features_{_size(pair.resolution)}" for pair in self.pairs))
        ]

    def unpaired(self):
        """The stages left out: `{"teacher": [...], "student": [...]}`."""
        paired_t = {pair.teacher_layer for pair in self.pairs}
        paired_s = {pair.student_layer for pair in self.pairs}
        return {
            "teacher": [s for s in self.teacher_stages if s.layer not in paired_t],
            "student": [s for s in self.student_stages if s.layer not in paired_s],
        }

    def table(self):
        """The plan as a text table, with the stages left out under it.

        Returns:
            A string of lines; columns separated by two spaces.
        """
        header = ("resolution", "teacher layer", "teacher shape", "student layer",
                  "student shape", "connector (projection='auto')")
        rows = [header] + [
            (_size(p.resolution), p.teacher_layer, _size(p.teacher_shape[1:]),
             p.student_layer, _size(p.student_shape[1:]), p.connector)
            for p in self.pairs
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        for role, left in self.unpaired().items():
            if left:
                listed = ", ".join(f"{s.layer} ({_size(s.resolution)})" for s in left)
                lines.append(f"{role} stages without a partner of the same resolution: {listed}")
        return "\n".join(lines)


def plan_features(teacher, student):
    """Feature distillation terms for a teacher and a student, from their graphs.

    Proposes one FitNets hint per stage the models share: the last layer of
    each teacher stage against the last layer of the student stage of the
    same resolution, with the connector the pair needs. The rule is in the
    docstring of `keras_kd.plan`; `FeaturePlan` gives the plan as data.

    Args:
        teacher: a Functional or Sequential `keras.Model` (nested models
            are followed).
        student: likewise.

    Returns:
        A list of `keras_kd.FeatureDistillation`, to pass (after a
        `LogitsDistillation`, if wanted) as `distillation_losses`.

    Raises:
        ValueError: as `FeaturePlan`.

    Example:

    ```python
    losses = [keras_kd.LogitsDistillation(4.0),
              *keras_kd.plan_features(teacher, student)]
    distiller = keras_kd.Distiller(teacher, student, losses)
    ```

    Reference:
        Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015,
        arXiv:1412.6550 (hints at several depths: Chen et al., "Distilling
        Knowledge via Knowledge Review", CVPR 2021, arXiv:2104.09044).
    """
    return FeaturePlan(teacher, student).losses()


# --------------------------------------------------------------------- stages


def stages(model, role="model"):
    """The stages of a model's main path, shallowest first.

    Args:
        model: a Functional or Sequential `keras.Model`.
        role: `"teacher"` or `"student"`, for messages.

    Returns:
        A list of `Stage`.

    Raises:
        ValueError: if the model has no symbolic graph, its feature maps
            have an unknown size, or never change resolution.
    """
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"The {role} must be a keras.Model, but received {type(model).__name__}: "
            f"{model!r:.80}. Load a saved model first: "
            f"keras.models.load_model('{role}.keras')."
        )
    records, outputs = _flatten(model, role)
    on_main_path = _main_path(records, outputs)
    uses = {}
    for record in records:
        uses[id(record.layer)] = uses.get(id(record.layer), 0) + 1

    runs = []  # [resolution, last record index, first record index of its computation]
    for index, record in enumerate(records):
        if not on_main_path[index]:
            continue
        shape = record.shape
        if shape is None:
            continue  # a layer with several outputs: not one feature
        if isinstance(record.layer, _GLOBAL_POOLING) or len(shape) < 3:
            if runs:
                break  # the head
            continue  # e.g. a Dense stem before a Reshape to feature maps
        if (
            len(shape) > 4
            or isinstance(record.layer, _PADDING)
            or not isinstance(record.layer, keras.layers.Layer)
            or uses[id(record.layer)] > 1  # a tap must run once per call
        ):
            continue
        resolution = tuple(shape[1:-1])
        if None in resolution:
            raise ValueError(
                f"Layer '{record.path}' of {role} '{model.name}' outputs feature "
                f"maps of unknown size {shape}, so its stages cannot be read from "
                f"the graph. Build the model with a fixed input size, e.g. "
                f"keras.Input(shape=(64, 64, 3))."
            )
        if runs and runs[-1][0] == resolution:
            runs[-1][1] = index
        else:
            runs.append([resolution, index, runs[-1][1] + 1 if runs else 0])

    input_resolution = _input_resolution(model)
    sizes = {input_resolution} | {resolution for resolution, _, _ in runs}
    if not runs or len(sizes - {None}) < 2:
        found = _resolutions([Stage(r, "", ()) for r, _, _ in runs]) if runs else "none"
        raise ValueError(
            f"{role.capitalize()} '{model.name}' has no change of spatial or "
            f"sequence resolution along its main path (input "
            f"{_size(input_resolution) if input_resolution else 'not a feature map'}, "
            f"feature map resolutions {found}), so it has no stages to pair. "
            f"plan_features needs models whose feature maps, (batch, steps, "
            f"channels) or (batch, height, width, channels), change size; for "
            f"other models name the layers yourself with "
            f"FeatureDistillation(teacher_layer_name=..., student_layer_name=...)."
        )
    return [
        Stage(resolution, records[last].path, records[last].shape)
        for resolution, last, first in runs
        if any(_has_weights(records[i].layer) for i in range(first, last + 1))
    ]


class _Record(typing.NamedTuple):
    """One call of a layer in the flattened graph."""

    path: str
    layer: typing.Any
    shape: typing.Any  # the output shape, or None for several outputs
    inputs: list  # indices of the records feeding it; _SOURCE for an input


class _Context(typing.NamedTuple):
    """One model call: the top-level model, or a nested model inside it."""

    prefix: str
    inputs: dict  # id(input tensor of this model) -> (parent context, tensor) or _SOURCE


def _flatten(model, role):
    """The layer calls of a model, nested models expanded, in topological order.

    Returns:
        `(records, output indices)`.
    """
    if symbolic_outputs(model) is None or not getattr(model, "inputs", None):
        raise ValueError(
            f"{role.capitalize()} '{model.name}' is a {type(model).__name__} "
            f"without a symbolic graph (a subclassed model, or a Sequential "
            f"built without an Input), so its stages cannot be read. Pass a "
            f"Functional or Sequential model built on keras.Input(...), or name "
            f"the layers yourself with FeatureDistillation(teacher_layer_name=..., "
            f"student_layer_name=...)."
        )
    top = _Context("", {id(tensor): _SOURCE for tensor in model.inputs})
    contexts = {}
    records, index = [], {}

    def producer(context, tensor):
        """Follows model inputs and nested models to the layer call behind
        a tensor: `_SOURCE` or `(key, context, operation, node_index,
        tensor)`, the tensor as the layer call sees it."""
        while True:
            if id(tensor) in context.inputs:
                outer = context.inputs[id(tensor)]
                if outer is _SOURCE:
                    return _SOURCE
                context, tensor = outer
                continue
            operation, node_index, tensor_index = _keras_compat.keras_history(tensor)
            if isinstance(operation, keras.Model) and symbolic_outputs(operation):
                key = (id(context), id(operation), node_index)
                if key not in contexts:
                    contexts[key] = _nested_context(context, operation, node_index)
                context, tensor = contexts[key], symbolic_outputs(operation)[tensor_index]
                continue
            if isinstance(operation, keras.layers.InputLayer):
                raise ValueError(
                    f"{role.capitalize()} '{model.name}' has an input "
                    f"'{operation.name}' that is not among its inputs, so its "
                    f"graph cannot be followed. Build the model on the inputs "
                    f"its layers are called on."
                )
            return ((id(context), id(operation), node_index), context, operation, node_index, tensor)

    stack = [(top, tensor, False) for tensor in reversed(symbolic_outputs(model))]
    while stack:
        context, tensor, expanded = stack.pop()
        found = producer(context, tensor)
        if found is _SOURCE or found[0] in index:
            continue
        key, context, operation, node_index, tensor = found
        inputs, outputs = _keras_compat.call_tensors(operation, node_index)
        if expanded:
            index[key] = len(records)
            records.append(_Record(
                context.prefix + operation.name, operation,
                tuple(outputs[0].shape) if len(outputs) == 1 else None,
                [_index_of(producer(context, t), index) for t in inputs]))
            continue
        stack.append((context, tensor, True))
        stack.extend((context, t, False) for t in reversed(inputs))
    outputs = [_index_of(producer(top, t), index) for t in symbolic_outputs(model)]
    return records, outputs


def _nested_context(parent, model, node_index):
    """The context of a nested model's call: its inputs map to the caller's."""
    inner = list(model.inputs)
    outer, _ = _keras_compat.call_tensors(model, node_index)
    if len(inner) != len(outer):
        raise ValueError(
            f"Nested model '{parent.prefix}{model.name}' has {len(inner)} inputs "
            f"but is called with {len(outer)} tensors, so its graph cannot be "
            f"followed. Call it on exactly its inputs."
        )
    return _Context(
        f"{parent.prefix}{model.name}/",
        {id(i): (parent, o) for i, o in zip(inner, outer)},
    )


def _index_of(found, index):
    return _SOURCE if found is _SOURCE else index[found[0]]


def _main_path(records, outputs):
    """Whether each record lies on every path from the inputs to the outputs.

    In a topological order, a node lies on every input-to-output path exactly
    when no edge jumps over it (from before it to after it): such an edge
    starts a path that avoids it, and a path that avoids it must cross its
    position with such an edge. The inputs are one source before the first
    record, the outputs one sink after the last.
    """
    jumps = [0] * (len(records) + 1)

    def edge(start, end):
        if end - start > 1:
            jumps[start + 1] += 1
            jumps[end] -= 1

    for end, record in enumerate(records):
        for start in record.inputs or [_SOURCE]:
            edge(start, end)
    for start in outputs:
        edge(start, len(records))
    on_path, open_edges = [], 0
    for position in range(len(records)):
        open_edges += jumps[position]
        on_path.append(open_edges == 0)
    return on_path


def _input_resolution(model):
    shape = tuple(model.inputs[0].shape)
    return shape[1:-1] if 3 <= len(shape) <= 4 else None


def _has_weights(operation):
    return bool(getattr(operation, "weights", None))


def _keyed(found):
    """`{(resolution, k): stage}`: the k-th stage of each resolution."""
    keyed, seen = {}, {}
    for stage in found:
        k = seen[stage.resolution] = seen.get(stage.resolution, -1) + 1
        keyed[(stage.resolution, k)] = stage
    return keyed


def _pair(teacher, student):
    connector = connectors.auto_connector(student.shape, teacher.shape)
    return FeaturePair(
        teacher.resolution, teacher.layer, student.layer, teacher.shape,
        student.shape, _describe(connector, student.shape),
    )


def _describe(connector, shape):
    """A connector in words: each layer and what it changes."""
    if connector is None:
        return "none"
    steps = []
    for layer in connector.layers:
        out = tuple(layer.compute_output_shape(shape))
        kernel = getattr(layer, "kernel_size", None)
        what = type(layer).__name__.lstrip("_") + (f" kernel {_size(kernel)}" if kernel else "")
        changes = []
        if out[1:-1] != tuple(shape[1:-1]):
            changes.append(f"{_size(shape[1:-1])} -> {_size(out[1:-1])}")
        if out[-1] != shape[-1]:
            changes.append(f"{shape[-1]} -> {out[-1]} channels")
        steps.append(f"{what}, {', '.join(changes)}")
        shape = out
    return " + ".join(steps)


def _size(dimensions):
    return "x".join(str(d) for d in dimensions)


def _resolutions(found):
    return "[" + ", ".join(_size(stage.resolution) for stage in found) + "]"


def _unique(names):
    seen, unique = {}, []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return unique


__all__ = [
    "FeaturePair",
    "FeaturePlan",
    "Stage",
    "plan_features",
    "stages",
]
