"""The hard-label term of the Distiller's objective.

`student_loss_weight * loss(y, student(x), sample_weight)`: the loss given to
`compile`, summed over the batch's `(y, weight)` targets (one, or several
when an augmentation mixes samples) as a per-replica mean. Two cases take
another route to the same value:

- for a language model whose hard-label loss is
  `SparseCategoricalCrossentropy(from_logits=True)` and whose distillation
  includes the forward KL on the same logits, one gradient pass gives both
  (`fused_term`, `fused_values`), sparing two `(batch, sequence,
  vocabulary)` buffers;
- for models whose logits are a projection of final hidden states
  (KerasHub causal LMs, a final `Dense`), the fused output head computes
  the distillation term, the cross-entropy and the top-1 agreement a chunk
  of positions at a time from the hidden states (`fused_head_plan`,
  `fused_head_values`): no `(batch, sequence, vocabulary)` logits at all;
- while `student_loss_weight` is 0 it is left out of the traced training
  step (`left_out`), which refuses to run once the weight leaves 0.
"""

import functools

import keras
import tensorflow as tf
from keras import ops

from keras_kd import _keras_compat, cache, lm
from keras_kd.losses import _fused_head
from keras_kd.losses.base import masked_mean
from keras_kd.losses.logits import LogitsDistillation


def check_compiled(compiled_loss, weight):
    """Refuses `compile(loss=None)` while the hard-label loss has a weight.

    Args:
        compiled_loss: the `loss` given to `Distiller.compile`.
        weight: `student_loss_weight`, as a float.

    Raises:
        ValueError: if `compiled_loss` is `None` and `weight > 0`.
    """
    if compiled_loss is None and weight > 0:
        raise ValueError(
            f"Distiller.compile() received loss=None, but "
            f"student_loss_weight={weight} > 0 needs a hard-label loss. "
            f"Pass the loss your labels need, e.g. loss=keras.losses."
            f"SparseCategoricalCrossentropy(from_logits=True), or build "
            f"the Distiller with student_loss_weight=0.0 to learn from "
            f"the teacher alone."
        )


def check_labels(targets, weight):
    """Refuses a batch without labels while the hard-label loss has a weight.

    Args:
        targets: the batch's `(y, weight)` pairs (empty without labels).
        weight: `student_loss_weight`, as a float.

    Raises:
        ValueError: if `targets` is empty and `weight > 0`.
    """
    if not targets and weight > 0:
        raise ValueError(
            f"The data has no labels, but student_loss_weight="
            f"{weight} > 0 needs them. Yield "
            f"(x, y) batches, or build the Distiller with "
            f"student_loss_weight=0.0 to learn from the teacher alone."
        )


def loss(compiled_loss, targets, student_output, sample_weight):
    """The hard-label loss of a batch, a plain per-replica mean.

    Args:
        compiled_loss: the model's compiled loss (`_keras_compat.compile_loss`).
        targets: the batch's `(y, weight)` pairs (`keras_kd.augment`).
        student_output: the student's output.
        sample_weight: the batch's sample weights, or `None`.

    Returns:
        A float32 scalar: the sum over targets of
        `compiled_loss(y, student_output, sample_weight * weight)`, without
        the division by the replica count that `keras.losses.Loss` applies.
    """
    return total([
        unscaled(ops.cast(compiled_loss(
            y, student_output, combine_weights(sample_weight, target_weight)), "float32"))
        for y, target_weight in targets
    ])


def left_out(weight):
    """The hard-label loss (0) of a training step traced while its weight is 0.

    Left out of the traced step (for a language model, a full-vocabulary
    cross-entropy and its gradient). The Distiller's
    `make_train_function()` retraces when the weight leaves 0; a stale step
    refuses to run rather than ignore it.

    Args:
        weight: `student_loss_weight`, as a float32 tensor.

    Returns:
        A float32 zero that depends on the check `weight == 0`.
    """
    check = tf.debugging.assert_equal(
        weight, 0.0,
        message="student_loss_weight left 0 after the training step was "
        "traced without the hard-label loss. Call "
        "distiller.make_train_function(force=True) after changing it, "
        "or change it with keras_kd.callbacks.DistillationScheduler.",
    )
    with tf.control_dependencies([check]):
        return total([]) + 0.0


def fused_term(terms, hard_label_loss, hard_label_loss_weights, targets,
               teacher_outputs, student_outputs, training, mask):
    """The term whose gradient pass can also compute the hard-label loss
    (`LogitsDistillation.compute_loss_and_cross_entropy`), or `None`.

    Only in training, for token-level logits that are the student's
    output, one label per position, the hard-label loss
    `keras.losses.SparseCategoricalCrossentropy(from_logits=True)`
    (without `ignore_class` or loss weights) and a forward-KL term on
    those logits: there, the value is the same and the step spares two
    `(batch, sequence, vocabulary)` buffers.

    Args:
        terms: the Distiller's `Term`s.
        hard_label_loss: the loss given to `compile`.
        hard_label_loss_weights: the `loss_weights` given to `compile`.
        targets: the batch's `(y, weight)` pairs.
        teacher_outputs: the teacher's `ViewOutputs`.
        student_outputs: the student's `ViewOutputs`.
        training: whether this is a training step.
        mask: the mask of real tokens, or `None`.

    Returns:
        A `Term`, or `None`.
    """
    student = student_outputs.output
    if not (training and mask is not None and len(targets) == 1 and targets[0][1] is None
            and not isinstance(teacher_outputs.logits, lm.TopK)
            and student is student_outputs.logits and len(student.shape) == 3
            and _keras_compat.keras_mask(student) is None
            and _is_plain_token_cross_entropy(hard_label_loss)
            and hard_label_loss_weights is None):
        return None
    for term in terms:
        if (isinstance(term.loss, LogitsDistillation) and term.loss.fuses_cross_entropy
                and term.teacher_path is None and term.student_path is None
                and term.expects_logits and term.logits_size is None
                and term.connector is None):
            return term
    return None


def fused_values(term, hard_label_loss, y, sample_weight, teacher_outputs, student_outputs, mask):
    """A fused term's value and the hard-label loss, from one gradient pass.

    Args:
        term: the `Term` returned by `fused_term`.
        hard_label_loss: the loss given to `compile`.
        y: the batch's labels.
        sample_weight: the batch's sample weights, or `None`.
        teacher_outputs: the teacher's `ViewOutputs`.
        student_outputs: the student's `ViewOutputs`.
        mask: the mask of real tokens.

    Returns:
        `(term value, hard-label loss)`, float32 scalars; the hard-label
        loss equals `loss(...)` of the same batch: the reduction and dtype
        of `hard_label_loss`, a per-replica mean.
    """
    teacher, student = term.pair(teacher_outputs, student_outputs, training=True)
    term.loss.validate_outputs(teacher, student)
    value, cross_entropy = term.loss.compute_loss_and_cross_entropy(teacher, student, y, mask)
    hard_label = _PerPositionLoss(hard_label_loss)(y, cross_entropy, sample_weight)
    return ops.cast(value, "float32"), unscaled(ops.cast(hard_label, "float32"))


class FusedHeadPlan:
    """What the fused output head needs of a Distiller, read once.

    Attributes:
        term: the one distillation `Term` it computes.
        teacher: the teacher's `keras_kd.losses._fused_head.Head`.
        student: the student's.
    """

    def __init__(self, term, teacher, student):
        self.term = term
        self.teacher = teacher
        self.student = student

    def per_position(self, teacher_logits, student_logits):
        """The term's per-position values of a chunk's logits."""
        loss = self.term.loss
        return loss.per_position(loss._terms, teacher_logits, student_logits)


def fused_head_plan(enabled, teachers, student, terms):
    """The fused output head's plan for a Distiller, or why it does not apply.

    It applies to one teacher and a student whose logits are a projection
    keras_kd can see (`_fused_head.head_of`: a KerasHub causal LM's
    `token_embedding(..., reverse=True)`, a final `Dense`), of the same
    vocabulary, distilled by one `LogitsDistillation` term on the logits
    whose value is a per-position divergence of one output (the forward KL
    by default, `ReverseKL`, `GeneralizedJSD`, ...), without a connector or
    labels. More conditions are read as the step is traced
    (`fused_head_applies`).

    Args:
        enabled: the Distiller's `fused_head` argument.
        teachers: the Distiller's teachers.
        student: its student.
        terms: its `Term`s.

    Returns:
        `(plan, None)`, or `(None, reason)`: a sentence saying why the
        unfused step runs.
    """
    if not enabled:
        return None, "fused_head=False"
    if len(teachers) != 1:
        return None, "there are several teachers"
    if len(terms) != 1:
        return None, "there are several distillation terms"
    term = terms[0]
    loss = term.loss
    if not (isinstance(loss, LogitsDistillation)
            and type(loss).compute_loss is LogitsDistillation.compute_loss
            and not keras.tree.is_nested(loss._terms)
            and term.teacher_path is None and term.student_path is None
            and term.expects_logits and term.logits_size is None
            and term.make_connector is None and not term.uses_labels):
        return None, (f"the distillation loss {type(loss).__name__} is not a per-position "
                      f"divergence of one output's logits")
    heads = []
    for role, model in (("teacher", teachers[0]), ("student", student)):
        head, reason = _fused_head.head_of(model)
        if head is None:
            return None, f"the {role}'s logits are not a projection keras_kd can see: {reason}"
        heads.append(head)
    if _fused_head.vocabulary(heads[0]) != _fused_head.vocabulary(heads[1]):
        return None, "the vocabularies differ"
    return FusedHeadPlan(term, *heads), None


def fused_head_applies(plan, hard_label_loss, hard_label_loss_weights, targets, weight, has_metrics):
    """Whether a training step traced now can use the fused head.

    The head gives no logits: it applies when no compiled metric reads
    them (fidelity metrics are computed a chunk at a time), and the hard-label loss (when its weight is not 0) is
    `SparseCategoricalCrossentropy(from_logits=True)` (without
    `ignore_class` or `loss_weights`) of one label per position, and the
    student's output is its logits (a final softmax would give that loss
    probabilities).

    Args:
        plan: the `FusedHeadPlan`.
        hard_label_loss: the loss given to `compile`.
        hard_label_loss_weights: the `loss_weights` given to `compile`.
        targets: the batch's `(y, weight)` pairs.
        weight: `student_loss_weight`, as a float.
        has_metrics: whether a metric needs the whole logits (a compiled
            one, or a fidelity one `keras_kd.metrics.measurable_by_chunks`
            refuses).

    Returns:
        A bool.
    """
    if has_metrics:
        return False
    if weight == 0 or hard_label_loss is None or not targets:
        return True
    return (plan.student.outputs_logits
            and len(targets) == 1 and targets[0][1] is None and len(targets[0][0].shape) == 2
            and _is_plain_token_cross_entropy(hard_label_loss) and hard_label_loss_weights is None)


def fused_head_values(plan, x, teacher, y, hard_label_loss, sample_weight, mask, cached=False,
                      statistics=(None, None)):
    """The term's value, the hard-label loss and the top-1 agreement of a
    training step, from the fused output head.

    Args:
        plan: the `FusedHeadPlan`.
        x: the batch's inputs.
        teacher: the teacher's final hidden states, or (`cached`) its
            cached logits or `keras_kd.lm.TopK`.
        y: the batch's labels, or `None` (no hard-label loss).
        hard_label_loss: the loss given to `compile` (used when `y` is given).
        sample_weight: the batch's sample weights, or `None`.
        mask: the mask of real tokens, or `None`.
        cached: whether `teacher` comes from a cache of teacher outputs.
        statistics: `keras_kd.metrics.fused_statistics`'s pair: what to
            compute per chunk for the fidelity metrics, and their labels.

    Returns:
        `(term value, hard-label loss or None, agreement, statistics)`:
        float32 scalars equal to the unfused step's (`Term.value`, `loss`,
        `keras_kd.metrics.teacher_agreement`), and the per-position
        fidelity values (`keras_kd.metrics.add_fidelity_values`).
    """
    student_hidden = plan.student.hidden(x, training=True)
    per_position, head, top1 = plan.per_position, plan.teacher, None
    if cached:
        head = None
        if isinstance(teacher, lm.TopK):  # as LogitsDistillation.compute_loss, a chunk at a time
            per_position, top1 = plan.term.loss._top_k_kl, lambda top: top.ids[:, 0]
    values, cross_entropy, agreement, measured = _fused_head.fused_head_values(
        per_position, head, plan.student, teacher, student_hidden, y, top1, *statistics)
    value = masked_mean(values, mask)
    hard_label = None
    if y is not None:
        hard_label = unscaled(ops.cast(
            _PerPositionLoss(hard_label_loss)(y, cross_entropy, sample_weight), "float32"))
    return value, hard_label, masked_mean(agreement, mask), measured


def _is_plain_token_cross_entropy(loss):
    """Whether a compiled `loss` is `SparseCategoricalCrossentropy(from_logits=True)`
    without `ignore_class` (the one `_PerPositionLoss` can stand in for)."""
    if not isinstance(loss, keras.losses.SparseCategoricalCrossentropy):
        return False
    config = loss.get_config()
    return config.get("from_logits") is True and config.get("ignore_class") is None


class _PerPositionLoss(keras.losses.Loss):
    """A compiled loss's reduction applied to values computed elsewhere.

    `_PerPositionLoss(loss)(y, values, sample_weight)` equals
    `loss(y, y_pred, sample_weight)` when `values` are `loss`'s per-position
    values of `y_pred`: the same reduction, dtype and replica scaling.
    """

    def __init__(self, loss):
        super().__init__(name=loss.name, reduction=loss.reduction, dtype=loss.dtype)

    def call(self, y_true, y_pred):
        return y_pred


def total(values):
    """The sum of a list of scalars (0 for none), without extra ops."""
    return functools.reduce(ops.add, values) if values else ops.zeros((), "float32")


def combine_weights(sample_weight, target_weight):
    """The product of two optional per-sample weights."""
    if target_weight is None:
        return sample_weight
    if sample_weight is None:
        return target_weight
    return ops.cast(sample_weight, "float32") * ops.cast(target_weight, "float32")


def unscaled(value):
    """A `keras.losses.Loss` value times the replica count: `Loss.__call__`
    divides by `num_replicas_in_sync`; the Distiller scales the whole
    objective once (no op on one replica)."""
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return value if replicas == 1 else value * replicas



def student_loss(given, may_fuse, terms, hard_label_loss, hard_label_loss_weights, compiled_loss,
                 targets, sample_weight, teacher_outputs, student_outputs, training, mask,
                 student_loss_weight):
    """The step's hard-label loss, by the one path that applies.

    In order: the value the fused output head already computed (`given`);
    one gradient pass shared with the forward KL (`fused_term`); nothing
    without a compiled loss or labels; `left_out` while the weight is 0 in
    training; else the compiled loss of the student's predictions.

    Args:
        given: the fused head's hard-label loss, or `None`.
        may_fuse: whether the logits' own fused pass may be looked for (not
            when the fused head computed the term).
        terms: the Distiller's terms.
        hard_label_loss: the loss given to `compile`.
        hard_label_loss_weights: the `loss_weights` given to `compile`.
        compiled_loss: Keras's compiled loss (`_keras_compat.compile_loss`).
        targets: the batch's `(y, weight)` pairs.
        sample_weight: the batch's sample weights, or `None`.
        teacher_outputs: the teacher's `ViewOutputs`.
        student_outputs: the student's `ViewOutputs`.
        training: whether the step trains.
        mask: the mask of real tokens, or `None`.
        student_loss_weight: the Distiller's `student_loss_weight` variable.

    Returns:
        `(hard-label loss, {term name: value} computed with it,
        traced_without_hard_labels)`: the last is `True`/`False` when the
        step traced with or without the hard-label loss (see
        `Distiller.make_train_function`), `None` when it does not say.

    Raises:
        ValueError: from `check_labels`.
    """
    weight_now = traced_value(student_loss_weight)
    check_labels(targets, weight_now)
    if given is not None:
        return given, {}, False
    fused = None
    if may_fuse and weight_now != 0:
        fused = fused_term(terms, hard_label_loss, hard_label_loss_weights, targets, teacher_outputs,
                           student_outputs, training, mask)
    if fused is not None:  # one gradient pass for the hard labels and the forward KL
        value, hard_label = fused_values(fused, hard_label_loss, targets[0][0], sample_weight,
                                         teacher_outputs, student_outputs, mask)
        return hard_label, {fused.name: value}, False
    if compiled_loss is None or not targets:
        return total([]), {}, None
    if training and weight_now == 0:
        return left_out(ops.cast(student_loss_weight, "float32")), {}, True
    return (loss(compiled_loss, targets, student_outputs.output, sample_weight), {},
            False if training else None)


def fused_head_for(plan, augment, data, hard_label_loss, hard_label_loss_weights, weight, has_metrics):
    """The fused head's plan when this training step can use it, else `None`.

    Args:
        plan: the Distiller's `FusedHeadPlan`, or `None`.
        augment: the Distiller's augmentation, or `None` (an augmented step
            never uses the fused head).
        data: the training batch.
        hard_label_loss: the loss given to `compile`.
        hard_label_loss_weights: the `loss_weights` given to `compile`.
        weight: `student_loss_weight`, as a float.
        has_metrics: whether a metric needs the whole logits (a compiled
            one, or a fidelity one `keras_kd.metrics.measurable_by_chunks`
            refuses).

    Returns:
        `plan`, or `None`.
    """
    if plan is None or augment is not None:
        return None
    _, y, _ = keras.utils.unpack_x_y_sample_weight(data)
    targets = [] if y is None else [(y, None)]
    if fused_head_applies(plan, hard_label_loss, hard_label_loss_weights, targets, weight, has_metrics):
        return plan
    return None


def traced_value(variable):
    """A variable's current value as a float, also while a step is traced.

    Args:
        variable: a `keras.Variable` (or a number).

    Returns:
        Its value as a Python float, read outside any traced function.
    """
    with tf.init_scope():
        return float(keras.ops.convert_to_numpy(variable))


def fused_head_teacher(plan, x, cached, teacher_spec, terms):
    """What the fused head reads of the teacher for a batch.

    Args:
        plan: the `FusedHeadPlan`.
        x: the batch's inputs (without the cache).
        cached: the batch's cached teacher outputs, or `None`.
        teacher_spec: the teacher view's symbolic outputs (for the cache's check).
        terms: the Distiller's terms (for the cache's check).

    Returns:
        The teacher's final hidden states (one forward, inference mode), or
        the cached logits or `keras_kd.lm.TopK`, read a chunk at a time.
    """
    if cached is None:
        return plan.teacher.hidden(x, training=False)
    cache.check_cached_outputs(cached, teacher_spec, terms)
    return cached.logits

__all__ = [
    "check_compiled",
    "check_labels",
    "combine_weights",
    "FusedHeadPlan",
    "fused_head_applies",
    "fused_head_for",
    "fused_head_plan",
    "fused_head_values",
    "fused_term",
    "fused_values",
    "left_out",
    "loss",
    "student_loss",
    "total",
    "traced_value",
    "fused_head_teacher",
    "unscaled",
]
