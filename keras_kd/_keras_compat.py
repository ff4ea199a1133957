"""Every use of private Keras / TensorFlow API in keras_kd, in one place.

Each function names the Keras version it was written against and why no
public API does the job. When Keras changes one of these, this is the only
file to change.
"""

import contextlib
import tempfile

import keras
import tensorflow as tf

# Keras 3.15: `keras.ops.softmax(x)` on a symbolic tensor records a
# `keras.src.ops.nn.Softmax` operation in the graph; no public name exists.
from keras.src.ops.nn import Softmax as SoftmaxOperation  # noqa: F401


def keras_history(tensor):
    """`(operation, node_index, tensor_index)` that produced a symbolic tensor.

    Keras 3.15 keeps a Functional graph's edges on `KerasTensor._keras_history`
    only; there is no public graph-walking API.
    """
    return tensor._keras_history


def call_tensors(operation, node_index):
    """`(inputs, outputs)`: the symbolic tensors of one call of an operation,
    each flattened to a list.

    Keras 3.15 records each call of a layer in a Functional graph as a
    `Node` in `operation._inbound_nodes`; there is no public graph-walking
    API (`keras_history` gives the `node_index`).
    """
    node = operation._inbound_nodes[node_index]
    return list(node.input_tensors), list(node.output_tensors)


def call_arguments(operation, node_index):
    """`(args, kwargs)` of one call of an operation in a Functional graph,
    with its symbolic tensors (Keras 3.15: `Node.arguments`, a
    `SymbolicArguments` holding `args` and `kwargs`)."""
    arguments = operation._inbound_nodes[node_index].arguments
    return tuple(arguments.args), dict(arguments.kwargs)


@contextlib.contextmanager
def replaced_calls(replacements):
    """Temporarily replaces `layer.call` of some layers (or operations).

    Keras 3.15 has no forward hooks: wrapping `call` for the duration of one
    model call is the one way to read an inner layer's input or output from
    that same call (it works inside `tf.function` and gradients flow).

    Args:
        replacements: `{layer: new_call}`.
    """
    restore = []
    for layer, new_call in replacements.items():
        restore.append((layer, "call" in vars(layer), layer.call))
        object.__setattr__(layer, "call", new_call)
    try:
        yield
    finally:
        for layer, had_own_call, original in reversed(restore):
            if had_own_call:
                object.__setattr__(layer, "call", original)
            else:
                object.__delattr__(layer, "call")


def compile_loss(model):
    """The compiled loss of a model (`None` when compiled without one).

    Keras 3.15 keeps it in `Model._compile_loss`; a custom `train_step`
    needs it to apply the user's `loss=` with their `sample_weight`.
    """
    return model._compile_loss


def compile_metrics(model):
    """The compiled metrics container (Keras 3.15: `_compile_metrics`)."""
    return model._compile_metrics


def has_compiled_metrics(model):
    """Whether `compile` was given any metric (Keras 3.15 builds a
    `CompileMetrics` even for `metrics=[]`; it keeps what it was given in
    `_user_metrics` / `_user_weighted_metrics`)."""
    metrics = model._compile_metrics
    if metrics is None:
        return False
    return any(keras.tree.flatten([metrics._user_metrics, metrics._user_weighted_metrics]))


def loss_tracker(model):
    """Keras's `loss` metric of a model (Keras 3.15: `_loss_tracker`)."""
    return model._loss_tracker


def in_multi_worker_mode(strategy):
    """Whether a strategy spans several workers.

    Keras 3.15 asks `strategy.extended._in_multi_worker_mode()` itself; a
    custom step must answer the same question the same way.
    """
    return isinstance(
        strategy, tf.distribute.MultiWorkerMirroredStrategy
    ) and strategy.extended._in_multi_worker_mode()


def one_replica_batch(iterator, data_batch, strategy):
    """The first batch Keras builds a model's compiled metrics from, as one
    replica's part, for `Model._maybe_symbolic_build`.

    Keras 3.15 takes a first batch from the epoch iterator to build the
    compiled metrics and reduces it across replicas with
    `strategy.reduce("MEAN")`, which raises under
    `MultiWorkerMirroredStrategy` ("Attempt to convert a value
    (PerReplica...)"), for any model. Only shapes matter there: one
    replica's part of the batch has them. A model overrides the private
    `_maybe_symbolic_build(iterator=None, data_batch=None)` to call Keras's
    with `data_batch=one_replica_batch(iterator, data_batch, strategy)`.

    Args:
        iterator: Keras's epoch iterator, or `None`.
        data_batch: the batch Keras was given, or `None`.
        strategy: the model's `distribute_strategy`.

    Returns:
        `data_batch` if given, else the iterator's first batch with every
        distributed value replaced by its first replica's part (`None`
        without an iterator).
    """
    if iterator is not None and data_batch is None:
        for _, _, batches in iterator:
            return keras.tree.map_structure(
                lambda value: _one_replica(value, strategy), next(batches)
            )
    return data_batch


def _one_replica(value, strategy):
    if isinstance(value, tf.distribute.DistributedValues):
        return strategy.experimental_local_results(value)[0]
    return value


def loss_scale_optimizer(optimizer, student):
    """The optimizer, wrapped in a `LossScaleOptimizer` for a `mixed_float16`
    student.

    Keras 3.15's `compile` wraps the optimizer only when the compiled model's
    own dtype policy is `mixed_float16`; a mixed student inside a float32
    model (the Distiller) needs it too, or float16 gradients underflow.

    Args:
        optimizer: a `keras.optimizers.Optimizer`.
        student: the model whose policy decides.

    Returns:
        `optimizer`, or a `keras.optimizers.LossScaleOptimizer` around it.
    """
    if student.dtype_policy.name == "mixed_float16" and not isinstance(
        optimizer, keras.optimizers.LossScaleOptimizer
    ):
        return keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def step_results(results, strategy):
    """A custom step's logs, shaped so that Keras can reduce them.

    Keras 3.15 reduces step results across workers with
    `strategy.reduce("MEAN", value, axis=0)`, which fails on scalars under
    `MultiWorkerMirroredStrategy`; a 1-element vector reduces to the same
    mean. Elsewhere the results are returned as they are.

    Args:
        results: `{name: scalar}`.
        strategy: the model's `distribute_strategy`.

    Returns:
        `{name: scalar}`, or `{name: (1,) tensor}` across workers.
    """
    if in_multi_worker_mode(strategy):
        return {k: keras.ops.reshape(v, (1,)) for k, v in results.items()}
    return results


def defined_by_keras(obj):
    """Whether a class or function is Keras's own, not a user's or another
    library's (e.g. a built-in layer class or activation).

    Keras 3.15 defines every built-in layer and activation in a `keras.src.*`
    module (the public `keras.layers` names are aliases); no public API tells
    a built-in from a subclass or a function written elsewhere.

    Args:
        obj: a class or a function.

    Returns:
        A bool.
    """
    return (getattr(obj, "__module__", None) or "").startswith("keras.src.")


def keras_mask(tensor):
    """The Keras mask attached to a tensor by masking layers, or `None`.

    Keras 3.15 exposes it only as `keras.src.backend.get_keras_mask`.
    """
    from keras.src.backend import get_keras_mask

    return get_keras_mask(tensor)


def litert_operations(interpreter):
    """`[(operation name, input dtypes, output dtypes)]` of a LiteRT file.

    ai-edge-litert 2.3 (with TensorFlow 2.21) lists a file's operations only
    through `Interpreter._get_ops_details()`; its public API describes the
    signature's inputs and outputs alone.
    """
    tensors = {t["index"]: t["dtype"] for t in interpreter.get_tensor_details()}
    return [
        (op["op_name"],
         [tensors[i] for i in op["inputs"] if i >= 0],
         [tensors[i] for i in op["outputs"]])
        for op in interpreter._get_ops_details()
    ]


__all__ = [
    "SoftmaxOperation",
    "call_tensors",
    "compile_loss",
    "compile_metrics",
    "defined_by_keras",
    "export_litert",
    "in_multi_worker_mode",
    "keras_version",
    "keras_history",
    "keras_mask",
    "litert_operations",
    "loss_scale_optimizer",
    "loss_tracker",
    "one_replica_batch",
    "replaced_calls",
    "step_results",
]


def keras_version():
    """`(major, minor)` of the installed Keras, e.g. `(3, 15)`."""
    major, minor = keras.version().split(".")[:2]
    return int(major), int(minor)


def export_litert(model, path, **converter_options):
    """Writes a model as a LiteRT (`.tflite`) file.

    Keras 3.13 added `model.export(path, format="litert", **converter_options)`.
    Keras 3.12 has no LiteRT format, so there the route Keras 3.13-3.15 takes
    is taken here with public API: the SavedModel of `format="tf_saved_model"`
    (a `serve` endpoint called with `training=False`) converted by
    `tf.lite.TFLiteConverter.from_saved_model`, with Keras 3.15's converter
    settings (builtin and select TF operations, resource variables) and then
    `converter_options` (attributes of the converter; `target_spec` a dict).

    Args:
        model: the Keras model.
        path: the `.tflite` file to write.
        **converter_options: e.g. `optimizations`, `representative_dataset`,
            `target_spec={"supported_types": [tf.float16]}`.
    """
    if keras_version() >= (3, 13):
        model.export(path, format="litert", verbose=False, **converter_options)
        return
    with tempfile.TemporaryDirectory() as saved_model:
        model.export(saved_model, format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved_model)
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
        converter.experimental_enable_resource_variables = True
        for name, value in converter_options.items():
            if name == "target_spec":
                for spec_name, spec_value in value.items():
                    setattr(converter.target_spec, spec_name, spec_value)
            else:
                setattr(converter, name, value)
        flatbuffer = converter.convert()
    with open(path, "wb") as file:
        file.write(flatbuffer)
