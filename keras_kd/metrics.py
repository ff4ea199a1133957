"""Fidelity diagnostics: what the student took from the teacher.

Keras metrics for `Distiller.compile(metrics=...)`, by name or instance:
`"teacher_kl"` (`TeacherKL`), `"student_ece"` and `"teacher_ece"`
(`CalibrationError`). The Distiller feeds them the teacher's and the
student's logits it already has in the step (no extra forward pass), with
the token mask of token-level outputs, and logs them in training and
validation next to `teacher_agreement`. Their state is sums (Keras
aggregates metric variables by summing across replicas), so the value is
the one of the global batch under `tf.distribute`.

The Distiller's own tracking lives here too: `teacher_agreement` (logged
every step), `update_fidelity` (feeds the metrics above from the step's
logits) and `TermMeans` (the running means of the logged loss terms).
"""

import keras
import tensorflow as tf
from keras import ops

from keras_kd import _keras_compat, _validation, lm
from keras_kd.hard_label import combine_weights
from keras_kd.losses.base import masked_mean
from keras_kd.losses.logits import mixture_logits


def class_ids(y_true, positions_shape, classes):
    """Labels as int32 class ids of shape `positions_shape`.

    Args:
        y_true: class ids `(...)` (or `(..., 1)`), or one-hot labels
            `(..., classes)`.
        positions_shape: the shape of the positions, `logits.shape[:-1]`.
        classes: the number of classes.

    Returns:
        An int32 tensor.
    """
    if len(y_true.shape) == len(positions_shape) + 1 and y_true.shape[-1] == classes and classes > 1:
        y_true = ops.argmax(y_true, axis=-1)
    return ops.reshape(ops.cast(y_true, "int32"), positions_shape)


def kl_per_position(teacher_logits, student_logits):
    """`KL(softmax(t) ‖ softmax(s))` per position, from `log_softmax` in float32."""
    log_p = ops.log_softmax(ops.cast(teacher_logits, "float32"), axis=-1)
    log_q = ops.log_softmax(ops.cast(student_logits, "float32"), axis=-1)
    return ops.sum(ops.exp(log_p) * (log_p - log_q), axis=-1)


def confidence_and_correct(logits, labels):
    """Per position: the top-1 probability of `logits`, and whether the
    top-1 class is `labels` (int32 class ids of the positions)."""
    logits = ops.cast(logits, "float32")
    confidence = ops.exp(ops.max(logits, axis=-1) - ops.logsumexp(logits, axis=-1))
    return confidence, ops.cast(ops.argmax(logits, axis=-1), "int32") == labels


def _weights(sample_weight, positions_shape):
    """Per-position float32 weights: the mask, or ones."""
    if sample_weight is None:
        return ops.ones(positions_shape, "float32")
    return ops.broadcast_to(ops.cast(sample_weight, "float32"), positions_shape)


@keras.saving.register_keras_serializable(package="keras_kd")
class TeacherKL(keras.metrics.Metric):
    """Mean `KL(teacher ‖ student)` at temperature 1, over samples or real tokens.

    `update_state(teacher_logits, student_logits, sample_weight)`: per
    position, `sum_c p_c (log p_c - log q_c)` with `p = softmax(t)`,
    `q = softmax(s)` from `log_softmax` in float32 (exact where
    probabilities underflow); the result is the weighted mean over every
    position seen since the last reset (each epoch). Inside a `Distiller`,
    positions are samples, or the real tokens of token-level outputs; with
    several teachers `p` is their mixture; with a top-K teacher cache the
    value is the KL over the K tokens plus one tail bucket (a lower bound,
    see `keras_kd.lm.top_k_kl`). It costs one log-softmax of each model's
    logits per step: for a language model, two `(batch, sequence,
    vocabulary)` buffers.

    Args:
        name: the name it is logged under.

    Example:

    ```python
    distiller.compile("adam", loss=..., metrics=["accuracy", "teacher_kl"])
    ```
    """

    def __init__(self, name="teacher_kl", **kwargs):
        super().__init__(name=name, **kwargs)
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        """Adds a batch.

        Args:
            y_true: teacher logits `(..., classes)`.
            y_pred: student logits, same shape.
            sample_weight: `(...)` weights of the positions (the token mask),
                or `None` for all.
        """
        self.add_values(kl_per_position(y_true, y_pred), sample_weight)

    def add_values(self, values, sample_weight=None):
        """Adds per-position KL values already computed (top-K caches)."""
        weights = _weights(sample_weight, ops.shape(values))
        self.total.assign_add(ops.sum(ops.cast(values, "float32") * weights))
        self.count.assign_add(ops.sum(weights))

    def result(self):
        return ops.divide_no_nan(self.total, self.count)


@keras.saving.register_keras_serializable(package="keras_kd")
class CalibrationError(keras.metrics.Metric):
    """Expected calibration error (ECE) of top-1 predictions, in equal-width bins.

    Each position's confidence is its top-1 probability `max softmax(z)`,
    its prediction the top-1 class. Positions fall into `bins` bins of
    confidence `((m-1)/M, m/M]`; with `n_m` positions in bin `m` out of `n`,
    `ECE = sum_m (n_m / n) |accuracy_m - confidence_m|` (Guo et al.'s
    definition). The per-bin counts, confidence sums and correct counts
    accumulate over every batch since the last reset (each epoch), so the
    value is the ECE of the whole epoch, not a mean of per-batch ECEs.

    ECE needs labels: inside a `Distiller`, it is updated only in steps
    whose batch has one class label per sample (`(x, y)` batches, not
    mixing augmentations), and it is left out of the logs of steps without
    labels (unlabelled training data) instead of showing a 0.

    Args:
        model: `"student"` or `"teacher"`: whose logits a `Distiller`
            gives it (elsewhere it measures the `y_pred` it receives).
        bins: number of equal-width confidence bins (15, as Guo et al.).
        name: the name it is logged under; `"<model>_ece"` by default.

    Raises:
        ValueError: if `model` is not `"student"` or `"teacher"`, or `bins`
            not a whole number >= 1.

    Example:

    ```python
    distiller.compile("adam", loss=..., metrics=["student_ece", "teacher_ece"])
    ```

    Reference:
        Guo, Pleiss, Sun & Weinberger, "On Calibration of Modern Neural
        Networks", ICML 2017, arXiv:1706.04599.
    """

    needs_labels = True

    def __init__(self, model="student", bins=15, name=None, **kwargs):
        if model not in ("student", "teacher"):
            raise ValueError(
                f"`model` must be 'student' or 'teacher', but received "
                f"{model!r}. Pass model='student' for the student's "
                f"calibration, 'teacher' for the teacher's."
            )
        if not _validation.is_whole_number(bins) or bins < 1:
            raise ValueError(
                f"`bins` must be a whole number >= 1, but received {bins!r}. "
                f"Pass e.g. bins=15."
            )
        super().__init__(name=name or f"{model}_ece", **kwargs)
        self.model = model
        self.bins = int(bins)
        self.counts = self.add_variable(shape=(self.bins,), initializer="zeros", name="counts")
        self.confidence = self.add_variable(
            shape=(self.bins,), initializer="zeros", name="confidence"
        )
        self.correct = self.add_variable(shape=(self.bins,), initializer="zeros", name="correct")

    def update_state(self, y_true, y_pred, sample_weight=None):
        """Adds a batch.

        Args:
            y_true: class ids `(...)`, or one-hot labels `(..., classes)`.
            y_pred: logits `(..., classes)`.
            sample_weight: `(...)` weights of the positions (the token mask),
                or `None` for all.
        """
        labels = class_ids(y_true, ops.shape(y_pred)[:-1], y_pred.shape[-1])
        self.add_predictions(*confidence_and_correct(y_pred, labels), sample_weight)

    def add_predictions(self, confidence, correct, sample_weight=None):
        """Adds top-1 confidences and whether each was right (top-K caches).

        Args:
            confidence: `(...)` top-1 probabilities.
            correct: `(...)` booleans.
            sample_weight: `(...)` weights, or `None`.
        """
        weights = ops.reshape(_weights(sample_weight, ops.shape(confidence)), (-1, 1))
        confidence = ops.reshape(ops.cast(confidence, "float32"), (-1,))
        correct = ops.reshape(ops.cast(correct, "float32"), (-1,))
        # Bin m (from 1) holds ((m-1)/M, m/M]; a confidence of 0 goes to the first.
        index = ops.clip(ops.cast(ops.ceil(confidence * self.bins), "int32") - 1, 0, self.bins - 1)
        in_bin = ops.one_hot(index, self.bins, dtype="float32") * weights
        self.counts.assign_add(ops.sum(in_bin, axis=0))
        self.confidence.assign_add(ops.sum(in_bin * confidence[:, None], axis=0))
        self.correct.assign_add(ops.sum(in_bin * correct[:, None], axis=0))

    def result(self):
        gaps = ops.abs(self.correct - self.confidence)  # n_m |acc_m - conf_m|
        return ops.divide_no_nan(ops.sum(gaps), ops.sum(self.counts))

    def get_config(self):
        return {**super().get_config(), "model": self.model, "bins": self.bins}


FIDELITY_METRICS = {
    "teacher_kl": TeacherKL,
    "student_ece": lambda: CalibrationError("student"),
    "teacher_ece": lambda: CalibrationError("teacher"),
}
"""The names `Distiller.compile(metrics=...)` takes for fidelity metrics."""


def is_fidelity_metric(metric):
    """Whether the Distiller (not Keras's compiled metrics) feeds `metric`."""
    if isinstance(metric, str):
        return metric in FIDELITY_METRICS
    return isinstance(metric, (TeacherKL, CalibrationError))


def get(identifier):
    """A fidelity metric from its name (or the metric itself).

    Args:
        identifier: `"teacher_kl"`, `"student_ece"`, `"teacher_ece"`, or a
            `TeacherKL` / `CalibrationError`.

    Returns:
        A metric instance.
    """
    if isinstance(identifier, str):
        return FIDELITY_METRICS[identifier]()
    return identifier


def split_metrics(metrics, weighted_metrics=None):
    """Separates the fidelity metrics the Distiller feeds from Keras's metrics.

    Args:
        metrics: `compile`'s `metrics` (a list, or anything Keras takes).
        weighted_metrics: `compile`'s `weighted_metrics`.

    Returns:
        `(fidelity metrics as instances, the other metrics or None)`; a
        `metrics` that is not a list is returned as it is.

    Raises:
        ValueError: if `weighted_metrics` holds fidelity metrics (they take
            no sample weights).
    """
    found = []
    if isinstance(metrics, (list, tuple)):
        found = [get(m) for m in metrics if is_fidelity_metric(m)]
        metrics = [m for m in metrics if not is_fidelity_metric(m)] or None
    misplaced = [m for m in weighted_metrics if is_fidelity_metric(m)] if isinstance(
        weighted_metrics, (list, tuple)) else []
    if misplaced:
        raise ValueError(
            f"`weighted_metrics` received the fidelity metrics {misplaced}, which "
            f"compare the student with the teacher (over real tokens for "
            f"token-level outputs) and take no sample weights. Pass them in "
            f"`metrics=` instead: compile(metrics={misplaced})."
        )
    return found, metrics


def _first_logits(logits, logits_size):
    """The first output's logits, cut to `logits_size` classes."""
    return keras.tree.flatten(lm.cut_logits(logits, logits_size))[0]


def _teacher_logits(logits, teacher_weights, logits_size):
    """One teacher's first-output logits, or several teachers' mixed at T=1."""
    teachers = keras.tree.flatten(lm.cut_logits(logits, logits_size))
    return mixture_logits(teachers, teacher_weights, 1.0) if len(teacher_weights) > 1 else teachers[0]


def teacher_agreement(teacher_logits, student_logits, mask, teacher_weights, logits_size=None):
    """Fraction of samples (real tokens) whose top-1 class is the teacher's.

    Args:
        teacher_logits: the teacher view's `logits` (a list with several
            teachers), or a `keras_kd.lm.TopK` cache, whose `ids[..., 0]`
            is the top-1 (most drawn) token.
        student_logits: the student view's `logits`.
        mask: the mask of real tokens, or `None`.
        teacher_weights: the teachers' weights in the mixture (`[1.0]`).
        logits_size: classes to cut the logits to
            (`vocabulary_alignment="truncate"`), or `None`.

    Returns:
        A float32 scalar. Models with several outputs: the first output's.
    """
    student = _first_logits(student_logits, logits_size)
    if isinstance(teacher_logits, lm.TopK):
        same = teacher_logits.ids[..., 0] == tf.argmax(student, axis=-1, output_type="int32")
        return masked_mean(ops.cast(same, "float32"), mask)
    teacher = _teacher_logits(teacher_logits, teacher_weights, logits_size)
    # tf.argmax: keras.ops.argmax adds a dozen ops of signed-zero handling.
    same = tf.argmax(teacher, axis=-1) == tf.argmax(student, axis=-1)
    return masked_mean(ops.cast(same, "float32"), mask)


def update_fidelity(metrics, targets, teacher_logits, student_logits, mask, teacher_weights,
                    logits_size=None):
    """Updates fidelity metrics from a step's logits (no extra forward pass).

    Args:
        metrics: the `TeacherKL` / `CalibrationError` instances to update.
        targets: the batch's `(y, weight)` pairs (`keras_kd.augment`); labels
            count only when there is one pair without a weight.
        teacher_logits: as in `teacher_agreement`.
        student_logits: the student view's `logits` (not differentiated).
        mask: the mask of real tokens, or `None`.
        teacher_weights: the teachers' weights in the mixture (`[1.0]`).
        logits_size: classes to cut the logits to, or `None`.

    Returns:
        The names of the metrics that need labels this batch does not have
        (left out of the step's logs: unknown, not 0).
    """
    if not metrics:
        return []
    student = ops.stop_gradient(_first_logits(student_logits, logits_size))
    labels = fidelity_labels(targets)
    if labels is not None:
        labels = class_ids(labels, ops.shape(student)[:-1], student.shape[-1])
    teacher = teacher_logits
    if not isinstance(teacher_logits, lm.TopK):
        teacher = _teacher_logits(teacher_logits, teacher_weights, logits_size)
    values = fidelity_values(metrics, teacher, student, labels)
    return add_fidelity_values(metrics, values, mask, labels is not None)


def fidelity_labels(targets):
    """The labels fidelity metrics read from a batch's `(y, weight)` pairs:
    the first output's, when there is one pair without a weight; else `None`."""
    if len(targets) == 1 and targets[0][1] is None:
        return keras.tree.flatten(targets[0][0])[0]
    return None


def fidelity_value_count(metrics, labelled):
    """How many per-position tensors `fidelity_values` returns."""
    return sum(1 if isinstance(m, TeacherKL) else 2 * labelled for m in metrics)


def fidelity_values(metrics, teacher, student, labels):
    """The per-position values that update the fidelity metrics.

    Position by position, so a step that never holds the whole logits (the
    fused output head) computes them a chunk of positions at a time.

    Args:
        metrics: the `TeacherKL` / `CalibrationError` instances.
        teacher: the teacher's logits `(..., classes)`, or a
            `keras_kd.lm.TopK` of the same positions.
        student: the student's logits `(..., classes)`.
        labels: int32 class ids of the positions, or `None`.

    Returns:
        A list, in the order of `metrics`: one KL tensor per `TeacherKL`;
        the confidence and correctness per `CalibrationError` (none without
        labels). `add_fidelity_values` consumes it.
    """
    top = teacher if isinstance(teacher, lm.TopK) else None
    values = []
    for metric in metrics:
        if isinstance(metric, TeacherKL):
            values.append(kl_per_position(teacher, student) if top is None else lm.top_k_kl(top, student))
        elif labels is None:
            continue
        elif metric.model == "student":
            values += confidence_and_correct(student, labels)
        elif top is None:
            values += confidence_and_correct(teacher, labels)
        else:  # a top-K cache holds the teacher's top-1 log-probability and id
            values += [ops.exp(ops.cast(top.log_probs[..., 0], "float32")), top.ids[..., 0] == labels]
    return values


def fused_statistics(metrics, targets):
    """What the fused output head computes a chunk at a time for the metrics.

    Args:
        metrics: the Distiller's fidelity metrics.
        targets: the batch's `(y, weight)` pairs.

    Returns:
        `(statistics, labels)`: `_fused_head.fused_head_values`'s
        `statistics` (`None` without metrics) and `statistic_labels`.
    """
    if not metrics:
        return None, None
    labels = fidelity_labels(targets)

    def per_chunk(teacher, student, chunk_labels):
        return fidelity_values(metrics, teacher, student, chunk_labels)

    return (per_chunk, fidelity_value_count(metrics, labels is not None)), labels


def measurable_by_chunks(metrics, data):
    """Whether the fused output head can feed `metrics` for a batch: the
    labels, when a calibration metric reads them, are token ids `(batch,
    sequence)` (one-hot labels would be a whole-vocabulary tensor)."""
    _, y, _ = keras.utils.unpack_x_y_sample_weight(data)
    labels = None if y is None else fidelity_labels([(y, None)])
    reads_labels = any(isinstance(m, CalibrationError) for m in metrics)
    return labels is None or not reads_labels or len(labels.shape) == 2


def add_fidelity_values(metrics, values, mask, labelled):
    """Adds `fidelity_values`'s list to the metrics.

    Args:
        metrics: the metrics `values` was computed for.
        values: `fidelity_values`'s list (its tensors may have been
            computed by chunks and joined).
        mask: the positions' weights, or `None`.
        labelled: whether `values` was computed with labels.

    Returns:
        The names of the metrics left out for want of labels.
    """
    values, skipped = list(values), []
    for metric in metrics:
        if isinstance(metric, TeacherKL):
            metric.add_values(values.pop(0), mask)
        elif not labelled:
            skipped.append(metric.name)
        else:
            metric.add_predictions(values.pop(0), values.pop(0), mask)
    return skipped


def built_results(metrics):
    """`{name: value}` of the metrics, leaving out those never built.

    What `keras.Model.get_metrics_result` returns, without the compiled
    metrics that never saw labels (a Distiller trained on unlabelled data),
    whose `result()` would fail. A metric whose result is a dict
    (`TermMeans`) is spread into the logs.

    Args:
        metrics: the model's `metrics`.

    Returns:
        A dict of scalars.
    """
    results = {}
    for metric in metrics:
        if not getattr(metric, "built", True):
            continue
        result = metric.result()
        if isinstance(result, dict):
            results.update(result)
        else:
            results[metric.name] = result
    return results


class TermMeans(keras.metrics.Metric):
    """Batch-size-weighted running means of several scalars, in one state.

    One update per step instead of one `Mean` per logged term: on small
    models the per-op cost of many trackers is a visible part of a step.
    `result()` is a dict, which Keras spreads into the logs.

    Args:
        names: the names of the scalars, as logged.

    Example:

    ```python
    means = TermMeans(["student_loss", "distillation_loss"])
    means.update_state({"student_loss": 1.0, "distillation_loss": 2.0}, 32.0)
    ```
    """

    def __init__(self, names):
        super().__init__(name="distillation_terms")
        self.names = list(names)
        self.total = self.add_variable(shape=(len(self.names),), initializer="zeros", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, values, batch_size):
        """Adds a batch: `values` is `{name: scalar}`, weighed by `batch_size`."""
        stacked = ops.stack([ops.cast(values[name], "float32") for name in self.names])
        self.total.assign_add(stacked * batch_size)
        self.count.assign_add(batch_size)

    def result(self):
        means = ops.divide_no_nan(self.total, self.count)
        return {name: means[i] for i, name in enumerate(self.names)}

    def reset_state(self):
        self.total.assign(ops.zeros_like(self.total))
        self.count.assign(0.0)



def update_step(distiller, values, x, targets, teacher_outputs, student_outputs, sample_weight, mask,
                measured=None):
    """Feeds one step's values to every tracker of a Distiller; returns the logs.

    The loss tracker and the term means take `values` (weighed by the batch
    size), the compiled metrics the student's predictions against each
    target, the fidelity metrics both models' logits.

    Args:
        distiller: the `keras_kd.Distiller`.
        values: `{name: scalar}` of the step, `teacher_agreement` included.
        x: the batch's inputs.
        targets: the batch's `(y, weight)` pairs.
        teacher_outputs: the teacher's `ViewOutputs`.
        student_outputs: the student's `ViewOutputs` (`output` is `None`
            in a fused-head step, which no compiled metric reads).
        sample_weight: the batch's sample weights, or `None`.
        mask: the mask of real tokens, or `None`.
        measured: `None`, or the fidelity metrics' values computed by the
            fused output head a chunk at a time: `(values, labelled)`, as
            `add_fidelity_values` takes them.

    Returns:
        `{name: value}` of every metric, without the fidelity metrics that
        need labels in a step without them (unknown, not 0).
    """
    batch_size = ops.cast(ops.shape(keras.tree.flatten(x)[0])[0], "float32")
    _keras_compat.loss_tracker(distiller).update_state(values["loss"], sample_weight=batch_size)
    distiller._logged_terms.update_state(values, batch_size)  # noqa: SLF001 - the Distiller's own
    compiled_metrics = _keras_compat.compile_metrics(distiller)
    if compiled_metrics is not None and student_outputs.output is not None:
        for y, target_weight in targets:
            compiled_metrics.update_state(
                y, student_outputs.output, combine_weights(sample_weight, target_weight))
    if measured is not None:
        unlabelled = add_fidelity_values(distiller.fidelity_metrics, measured[0], mask, measured[1])
    else:
        unlabelled = update_fidelity(
            distiller.fidelity_metrics, targets, teacher_outputs.logits, student_outputs.logits, mask,
            distiller.teacher_weights, distiller._logits_size)  # noqa: SLF001
    results = distiller.get_metrics_result()
    for name in unlabelled:
        results.pop(name, None)
    return results


def with_fidelity_metrics(compile_config, fidelity_metrics):
    """A Distiller's compile config with its fidelity metrics, which Keras
    does not see, serialized among the metrics.

    Args:
        compile_config: `keras.Model.get_compile_config()`'s result, or `None`.
        fidelity_metrics: the Distiller's `fidelity_metrics`.

    Returns:
        The config (the same dict, extended), or `None`.
    """
    if compile_config is not None and fidelity_metrics:
        compile_config["metrics"] = list(compile_config.get("metrics") or []) + [
            keras.saving.serialize_keras_object(m) for m in fidelity_metrics
        ]
    return compile_config


def take_fidelity_metrics(fidelity_metrics, metrics, weighted_metrics=None):
    """Moves the fidelity metrics of `compile(metrics=...)` into a Distiller's list.

    The list is emptied and refilled in place: Keras untracks what leaves a
    tracked list, so a re-compile without them does not keep logging stale
    metrics.

    Args:
        fidelity_metrics: the Distiller's `fidelity_metrics` list.
        metrics: what `compile` received as `metrics`.
        weighted_metrics: what `compile` received as `weighted_metrics`.

    Returns:
        The metrics left for Keras (`split_metrics`'s second value).
    """
    fidelity_metrics.clear()
    found, metrics = split_metrics(metrics, weighted_metrics)
    fidelity_metrics.extend(found)
    return metrics

__all__ = [
    "FIDELITY_METRICS", "CalibrationError", "TeacherKL", "TermMeans", "built_results", "class_ids", "get",
    "is_fidelity_metric", "split_metrics", "teacher_agreement", "update_fidelity",
    "take_fidelity_metrics", "update_step", "with_fidelity_metrics",
]
