"""`DistillationLoss`: the protocol every keras_kd distillation loss follows."""

import contextlib
import re
import threading

import keras
import tensorflow as tf
from keras import ops


@keras.saving.register_keras_serializable(package="keras_kd")
class DistillationLoss:
    """Base class of a term of the distillation objective.

    A loss says which outputs it compares and how. The `Distiller` runs each
    model once per step, hands every loss the outputs it asked for, and adds
    `weight * compute_loss(...)` to the objective.

    The protocol is `keras.distillation.DistillationLoss`'s, so a loss written
    for Keras runs here unchanged:

    - `teacher_layer_name` / `student_layer_name`: the layer whose output the
      loss reads (a `"parent/child"` path into nested models), or `None` for
      the model's final output.
    - `compute_loss(teacher_outputs, student_outputs)` returns a scalar: the
      mean over the (per-replica) batch. It must not divide by the replica
      count; the Distiller scales the whole objective once.
    - `validate_model_compatibility(teacher, student)` raises at construction
      when the models cannot be used with this loss.

    keras_kd adds:

    - `expects_logits`: when `True` and no layer is named, the loss receives
      logits (for a model ending in softmax, the softmax's input). When
      `False`, it receives the final output as the model returns it.
    - `compute_loss(..., mask=...)`: for token-level outputs `(batch,
      sequence, ...)` the Distiller passes the mask of real tokens `(batch,
      sequence)` (else `None`); keras_kd's losses return `masked_mean(...)`
      of their per-position values. A loss that takes `**kwargs` receives
      it too (and may ignore it, as keras.distillation's losses do).
    - `schedulable`: names of numeric attributes (for example
      `"temperature"`) that the Distiller turns into non-trainable
      `keras.Variable`s, so a callback can change them inside a compiled step.
    - `name`: the name its term is logged under.
    - `layer`: a `keras.layers.Layer` holding variables the loss learns
      (`CTKD`'s temperature); the Distiller tracks it, so its trainable
      weights are trained by the Distiller's optimizer and saved with the
      Distiller.
    - `logged`: names of attributes whose value the Distiller logs each step
      as `<term>_<attribute>` (their mean over the epoch).
    - `set_epoch(epoch)`: called by `Distiller.fit` as each epoch begins.

    Example:

    ```python
    class MeanAbsoluteLogits(keras_kd.DistillationLoss):
        def compute_loss(self, teacher_outputs, student_outputs, **kwargs):
            return keras.ops.mean(
                keras.ops.abs(teacher_outputs - student_outputs))
    ```
    """

    teacher_layer_name = None
    student_layer_name = None
    expects_logits = False
    schedulable = ()

    @property
    def name(self):
        """The name this term is logged under (snake_case of the class)."""
        return getattr(self, "_name", None) or _snake_case(type(self).__name__)

    @name.setter
    def name(self, value):
        self._name = value

    def compute_loss(self, teacher_outputs, student_outputs, **kwargs):
        """Returns the scalar loss between teacher and student outputs.

        Args:
            teacher_outputs: the teacher output this loss asked for.
            student_outputs: the matching student output.
            **kwargs: `mask` for token-level outputs (see the class);
                present for keras.distillation compatibility.

        Returns:
            A scalar float32 tensor.
        """
        raise NotImplementedError(
            f"{type(self).__name__} must implement compute_loss()."
        )

    def validate_model_compatibility(self, teacher, student):
        """Raises `ValueError` if the models cannot be used with this loss."""

    def validate_outputs(self, teacher_outputs, student_outputs):
        """Raises `ValueError` if the outputs cannot be compared."""
        keras.tree.assert_same_structure(teacher_outputs, student_outputs)

    def get_config(self):
        config = {}
        if getattr(self, "_name", None):
            config["name"] = self._name
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _snake_case(name):
    """`LogitsDistillation` -> `logits_distillation`, `DKD` -> `dkd`."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


def masked_mean(values, mask=None):
    """The mean of per-position values over real positions, replica-correct.

    The denominator is the number of real positions in the **global** batch:
    each replica's count is summed across replicas. Each replica returns
    `replicas * local sum / global count`, so the Distiller's one division
    by the replica count, and the gradient sum over replicas, give exactly
    the global masked mean, however the padding falls between replicas.

    Args:
        values: per-position values, e.g. `(batch,)` or `(batch, sequence)`.
        mask: `None` (every position counts), or weights of the positions
            (1 real, 0 padding) with as many axes as `values` — any other
            rank (a per-sample value of a token-level batch) is averaged
            plainly, as it has no padded positions.

    Returns:
        A scalar float32 tensor; 0 when no position is real.

    Example:

    ```python
    masked_mean(keras.ops.array([[1.0, 3.0], [5.0, 7.0]]),
                keras.ops.array([[1, 1], [1, 0]]))  # 3.0
    ```
    """
    values = ops.cast(values, "float32")
    if mask is None or len(mask.shape) != len(values.shape):
        return ops.mean(values)
    current = getattr(_COUNTS, "current", None)
    count, replicas = current[1] if current and current[0] is mask else _global_count(mask)
    return ops.sum(values * ops.cast(mask, "float32")) * replicas / ops.maximum(count, 1.0)


_COUNTS = threading.local()  # one slot per replica thread (MirroredStrategy)


@contextlib.contextmanager
def global_token_count(mask):
    """Within the block, `masked_mean(..., mask)` reuses one global count.

    The Distiller opens it around a step, so that one all-reduce of the
    count serves every term and metric of the step: a single collective,
    before the loss (and so before the gradients' all-reduce) in every
    replica, instead of one per term in an order replicas might not share.

    Args:
        mask: the step's token mask, or `None` (then it does nothing).
    """
    previous = getattr(_COUNTS, "current", None)
    _COUNTS.current = None if mask is None else (mask, _global_count(mask))
    try:
        yield
    finally:
        _COUNTS.current = previous


def _global_count(mask):
    """`(count of real positions across replicas, replica count)`."""
    local_count = ops.sum(ops.cast(mask, "float32"))
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return ops.stop_gradient(local_count), 1.0  # one replica, or cross-replica code
    # stop_gradient after the all-reduce: backpropagation must not add an
    # all-reduce of its own.
    count = context.all_reduce(tf.distribute.ReduceOp.SUM, local_count)
    return ops.stop_gradient(count), float(context.num_replicas_in_sync)


def map_losses(fn, loss):
    """Applies `fn` to a loss, or to each entry of a list or dict of losses
    (one per model output; `None` entries stay `None`). A dict with a
    `"class_name"` is one serialized loss, not a dict of them."""
    if isinstance(loss, (list, tuple)) or (
        isinstance(loss, dict) and "class_name" not in loss
    ):
        return keras.tree.map_structure(
            lambda entry: None if entry is None else fn(entry), loss
        )
    return fn(loss)


def sum_over_outputs(apply, losses, teacher_outputs, student_outputs):
    """The sum over a model's outputs of `apply(loss, teacher, student)`.

    Args:
        apply: `(loss, teacher value, student value) -> scalar`.
        losses: one loss for every output, or a structure (list, dict) with
            one loss per output, `None` to skip an output.
        teacher_outputs: a tensor or a structure of them (`keras.tree`).
        student_outputs: the same structure.

    Returns:
        A scalar tensor.
    """
    teachers = keras.tree.flatten(teacher_outputs)
    students = keras.tree.flatten(student_outputs)
    per_output = (
        keras.tree.flatten(losses)
        if isinstance(losses, (list, tuple, dict))
        else [losses] * len(teachers)
    )
    values = [
        apply(loss, t, s)
        for loss, t, s in zip(per_output, teachers, students)
        if loss is not None
    ]
    return values[0] if len(values) == 1 else keras.ops.sum(keras.ops.stack(values))


def serialize_loss(loss):
    """A loss argument for `get_config`: names stay names."""
    if loss is None or isinstance(loss, str):
        return loss
    return keras.saving.serialize_keras_object(loss)


def deserialize_loss(config):
    """The inverse of `serialize_loss`."""
    if config is None or isinstance(config, str):
        return config
    return keras.saving.deserialize_keras_object(config)


def keras_loss_function(loss, also_accepted, example, names=()):
    """A Keras loss name, instance or function, made ready to apply.

    Args:
        loss: what the user passed.
        also_accepted: the other kinds of loss the caller takes, for the
            message.
        example: a valid `loss=` to suggest.
        names: keras_kd's own loss names the caller accepts, for the
            message when `loss` is an unknown name.

    Returns:
        `(per_sample, core)`: `per_sample(y_true, y_pred)` is unreduced and,
        unlike `Loss.__call__`, not divided by the replica count; `core` is
        the underlying function (`KLDivergence().fn` is `kl_divergence`).

    Raises:
        ValueError: if `loss` is none of these.
    """
    if isinstance(loss, str):
        try:
            fn = keras.losses.get(loss)
        except ValueError:
            raise ValueError(
                f"Unknown loss name {loss!r}. keras_kd's names here: "
                f"{sorted(names)}; any keras.losses name works too (e.g. "
                f"'mse', 'kl_divergence', 'huber'). Pass e.g. {example}."
            ) from None
    else:
        fn = loss
    if fn is None or not callable(fn):
        raise ValueError(
            f"`loss` must be a loss name, a keras Loss, {also_accepted} or a "
            f"function, but received {loss!r}. Pass e.g. {example}."
        )
    per_sample = fn.call if isinstance(fn, keras.losses.Loss) else fn
    return per_sample, getattr(fn, "fn", fn)


__all__ = [
    "DistillationLoss",
    "deserialize_loss",
    "global_token_count",
    "keras_loss_function",
    "map_losses",
    "masked_mean",
    "serialize_loss",
    "sum_over_outputs",
]
