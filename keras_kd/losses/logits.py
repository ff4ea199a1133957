"""Logit distillation: losses between the teacher's and the student's logits."""

import functools
import numbers

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_kd import lm
from keras_kd._validation import as_float, check_flag, check_number, check_temperature
from keras_kd.losses.base import (
    DistillationLoss,
    deserialize_loss,
    keras_loss_function,
    map_losses,
    masked_mean,
    serialize_loss,
    sum_over_outputs,
)


def log_softmax_at(logits, temperature):
    """Log-probabilities of `logits / temperature`, in float32."""
    logits = ops.cast(logits, "float32")
    return ops.log_softmax(logits / ops.cast(temperature, "float32"), axis=-1)


def standardize_logits(logits, epsilon=1e-7):
    """Z-scores logits over the last axis, per position (logit standardization).

    `(z - mean(z)) / (std(z) + epsilon)`, with the standard deviation over
    the classes computed as the authors' code does (PyTorch's `std`, which
    divides by `classes - 1`). Softmax at temperature `T` of the result is
    softmax of `z / (T std(z))`: each model's own spread sets its effective
    temperature, so the student matches the teacher's logit relations, not
    their range.

    Args:
        logits: shape `(..., classes)`, `classes >= 2`.
        epsilon: added to the standard deviation (the authors' 1e-7).

    Returns:
        A float32 tensor of the same shape.

    Reference:
        Sun, Ren, Li, Wang & Cao, "Logit Standardization in Knowledge
        Distillation", CVPR 2024, arXiv:2403.01427.
    """
    logits = ops.cast(logits, "float32")
    centered = logits - ops.mean(logits, axis=-1, keepdims=True)
    degrees = max(logits.shape[-1] - 1, 1)
    std = ops.sqrt(ops.sum(ops.square(centered), axis=-1, keepdims=True) / degrees)
    return centered / (std + epsilon)


# Divergences between distributions given as log-probabilities `log_p`
# (teacher) and `log_q` (student), both (..., classes). Each returns one value
# per position (the last axis summed, nothing averaged): softening, the T²
# factor, masks and the mean happen once, in `LogitsDistillation`.


def kl_divergence(log_p, log_q):
    """Forward KL, `KL(p ‖ q) = sum p (log p - log q)`, per position.

    Args:
        log_p: teacher log-probabilities, shape `(..., classes)`.
        log_q: student log-probabilities, same shape.

    Returns:
        A float32 tensor of shape `(...)`. Exact where probabilities
        underflow: no clipping, only log-probabilities.
    """
    return ops.sum(ops.exp(log_p) * (log_p - log_q), axis=-1)


def reverse_kl(log_p, log_q):
    """Reverse KL, `KL(q ‖ p)` (student to teacher), per position: mode-seeking.

    Args:
        log_p: teacher log-probabilities, shape `(..., classes)`.
        log_q: student log-probabilities, same shape.

    Returns:
        A float32 tensor of shape `(...)`.
    """
    return kl_divergence(log_q, log_p)


def generalized_jsd(log_p, log_q, beta=0.5):
    """Generalized Jensen-Shannon divergence, per position.

    With the mixture `m = beta p + (1 - beta) q`:
    `beta KL(p ‖ m) + (1 - beta) KL(q ‖ m)`. The ends are the two KLs, as in
    TRL's `generalized_jsd_loss`: `beta=0` gives the forward `KL(p ‖ q)` and
    `beta=1` the reverse `KL(q ‖ p)` (the interpolation itself tends to 0 at
    both ends; the GKD paper names the ends the other way round and scales
    the interpolation). `beta=0.5` is the symmetric Jensen-Shannon
    divergence, bounded by `log 2`.

    Args:
        log_p: teacher log-probabilities, shape `(..., classes)`.
        log_q: student log-probabilities, same shape.
        beta: the teacher's weight in the mixture, in [0, 1] (a Python
            float or a scalar tensor for the interior).

    Returns:
        A float32 tensor of shape `(...)`.

    Reference:
        Agarwal et al., "On-Policy Distillation of Language Models: Learning
        from Self-Generated Mistakes", ICLR 2024, arXiv:2306.13649.
    """
    if isinstance(beta, (int, float)) and beta in (0, 1):
        return kl_divergence(log_p, log_q) if beta == 0 else reverse_kl(log_p, log_q)
    beta = ops.cast(beta, "float32")
    log_m = ops.logsumexp(
        ops.stack([log_p + ops.log(beta), log_q + ops.log(1.0 - beta)]), axis=0
    )
    return beta * kl_divergence(log_p, log_m) + (1.0 - beta) * kl_divergence(log_q, log_m)


def jensen_shannon(log_p, log_q):
    """Jensen-Shannon divergence (`generalized_jsd` at `beta=0.5`), per position."""
    return generalized_jsd(log_p, log_q, 0.5)


def soft_cross_entropy(log_p, log_q):
    """Cross-entropy `H(p, q) = -sum p log q`, per position.

    Equals `kl_divergence` plus the teacher's entropy (a constant for the
    student), so it has the same gradients.
    """
    return -ops.sum(ops.exp(log_p) * log_q, axis=-1)


def logits_mse(teacher_logits, student_logits):
    """Mean squared difference of raw logits over the last axis, per position.

    Args:
        teacher_logits: shape `(..., classes)`.
        student_logits: same shape.

    Returns:
        A float32 tensor of shape `(...)`.
    """
    difference = ops.cast(teacher_logits, "float32") - ops.cast(student_logits, "float32")
    return ops.mean(ops.square(difference), axis=-1)


def _on_distributions(divergence):
    """`divergence(log_p, log_q)` as `fn(t, s, T, labels)`: softened at T, times T²."""

    def per_position(teacher_logits, student_logits, temperature, labels=None):
        log_p = log_softmax_at(teacher_logits, temperature)
        log_q = log_softmax_at(student_logits, temperature)
        return divergence(log_p, log_q) * ops.square(ops.cast(temperature, "float32"))

    per_position.divergence = divergence
    return per_position


_CHUNK_ELEMENTS = 2**20
"""Logit elements (4 MiB in float32) per chunk of positions in
`_chunked_positions`: each intermediate of a chunk takes about this much."""


def _chunked_positions(function, tensors, outputs=1):
    """Per-position values of `function`, a chunk of positions at a time.

    For outputs with a sequence axis (language models), the leading
    (batch, sequence) axes of `tensors` are flattened into positions and
    `function` runs on chunks of `_CHUNK_ELEMENTS // vocabulary` positions:
    its `(positions, vocabulary)` intermediates take a chunk's size, not a
    `(batch, sequence, vocabulary)` buffer each. A chunk is a slice along
    the first axis, which TensorFlow hands over without a copy. Every chunk
    has the same size (the last one starts earlier and overlaps the one
    before), so the loop also compiles with XLA.

    Args:
        function: `function(*chunks)` returns a tuple of `outputs`
            `(positions,)` float32 values.
        tensors: `(batch, sequence, ...)` tensors; without a sequence axis
            (2-D logits), `function` is called once on them as they are.
        outputs: how many values `function` returns.

    Returns:
        The tuple of `(batch, sequence)` values.
    """
    if len(tensors[0].shape) < 3:
        return function(*tensors)
    leading = tf.shape(tensors[0])[:2]
    rows = [tf.reshape(x, tf.concat([[-1], tf.shape(x)[2:]], 0)) for x in tensors]
    count = tf.shape(rows[0])[0]
    size = tf.minimum(count, tf.maximum(1, _CHUNK_ELEMENTS // tf.shape(rows[0])[-1]))
    chunks = (count + size - 1) // size
    starts = tf.minimum(tf.range(chunks) * size, count - size)
    arrays = tuple(tf.TensorArray(tf.float32, size=chunks) for _ in range(outputs))

    def body(i, arrays):
        chunk = [x[starts[i]:starts[i] + size] for x in rows]
        return i + 1, tuple(a.write(i, v) for a, v in zip(arrays, function(*chunk)))

    # One chunk at a time: TensorFlow would otherwise run up to 10 at once.
    _, arrays = tf.while_loop(lambda i, _: i < chunks, body, (tf.constant(0), arrays),
                              parallel_iterations=1)
    # Position r was computed in chunk min(r // size, chunks - 1), at offset r - its start.
    positions = tf.range(count)
    chunk_of = tf.minimum(positions // size, chunks - 1)
    taken = chunk_of * size + positions - tf.gather(starts, chunk_of)
    return tuple(tf.reshape(tf.gather(a.concat(), taken), leading) for a in arrays)


def _forward_kl_values(teacher, student, temperature):
    log_p = ops.log_softmax(ops.cast(teacher, "float32") / temperature, axis=-1)
    log_q = ops.log_softmax(ops.cast(student, "float32") / temperature, axis=-1)
    return ops.sum(ops.exp(log_p) * (log_p - log_q), axis=-1) * ops.square(temperature)


def _forward_kl_gradient(teacher, student, temperature, upstream):
    p = ops.softmax(ops.cast(teacher, "float32") / temperature, axis=-1)
    q = ops.softmax(ops.cast(student, "float32") / temperature, axis=-1)
    return (q - p) * (upstream[..., None] * temperature)


def _softmax_minus_one_hot(logits, labels):
    """`softmax(logits) - one_hot(labels)` (the gradient of the cross-entropy),
    from TensorFlow's fused kernel, which writes it in the logits' buffer
    when nothing else needs them."""
    vocabulary = tf.shape(logits)[-1]
    _, gradient = tf.raw_ops.SparseSoftmaxCrossEntropyWithLogits(
        features=tf.reshape(logits, [-1, vocabulary]), labels=tf.reshape(labels, [-1]))
    return tf.reshape(gradient, tf.shape(logits))


def _forward_kl_fused(teacher_logits, student_logits, temperature, labels=None):
    """`_on_distributions(kl_divergence)` computed to spare memory.

    Same value; the gradient with respect to the student's logits is
    `T (softmax(s/T) - softmax(t/T))` per position. Nothing but the two
    models' logits is kept for the backward pass; the values are computed
    a chunk of positions at a time (`_chunked_positions`), and the gradient
    waits for the gradient flowing in (TensorFlow would otherwise run it
    during the forward pass, beside everything else), then reuses the two
    logits' buffers: two `(batch, sequence, vocabulary)` buffers in all.
    """
    temperature = tf.cast(tf.convert_to_tensor(temperature), "float32")  # a variable: read once, here
    teacher = ops.stop_gradient(teacher_logits)  # a constant of the step, not an input

    @tf.custom_gradient
    def fused(student):
        def gradient(upstream):
            with tf.control_dependencies([upstream]):
                return ops.cast(_forward_kl_gradient(teacher, student, temperature, upstream), student.dtype)

        (values,) = _chunked_positions(lambda t, s: (_forward_kl_values(t, s, temperature),), (teacher, student))
        return values, gradient

    return fused(student_logits)


def forward_kl_and_cross_entropy(teacher_logits, student_logits, temperature, labels):
    """Per-position forward KL and hard-label cross-entropy, with one gradient.

    A language model's step needs both terms, and each one's gradient with
    respect to the student's logits is a `(batch, sequence, vocabulary)`
    tensor; computed apart, the two gradients and their sum take three such
    buffers besides the logits. Here the backward pass computes
    `u_kl T (softmax(s/T) - softmax(t/T)) + u_ce (softmax(s) - onehot(y))`,
    where `u_kl`, `u_ce` are the gradients flowing into each term's values,
    in the logits' own buffers: at `T = 1` as
    `(u_kl + u_ce) (softmax(s) - onehot(y)) - u_kl (softmax(t) - onehot(y))`,
    two buffers in all (the one-hot terms cancel up to float32 rounding,
    ~1e-7 absolute at the label); at other temperatures `softmax(s/T)`
    and `softmax(s)` both need `s`, and one more buffer. The values equal
    `_forward_kl_fused` and
    `keras.losses.sparse_categorical_crossentropy(y, s, from_logits=True)`,
    computed a chunk of positions at a time (`_chunked_positions`).

    Args:
        teacher_logits: `(batch, sequence, vocabulary)`.
        student_logits: the same shape.
        temperature: the KL's softmax temperature (the cross-entropy's is 1).
        labels: `(batch, sequence)` integer token ids.

    Returns:
        `(kl, cross_entropy)`, each `(batch, sequence)` float32: the KL times
        T², and the negative log-likelihood of the labels.
    """
    if len(student_logits.shape) != 3:
        raise ValueError(
            f"forward_kl_and_cross_entropy() takes token-level logits "
            f"(batch, sequence, vocabulary), but received the shape "
            f"{tuple(student_logits.shape)}.")
    temperature = tf.cast(tf.convert_to_tensor(temperature), "float32")  # a variable: read once, here
    teacher = ops.stop_gradient(teacher_logits)
    labels = ops.cast(labels, "int32")

    def values(t, s, y):
        log_q = ops.log_softmax(ops.cast(s, "float32"), axis=-1)
        nll = -ops.take_along_axis(log_q, y[..., None], axis=-1)[..., 0]
        return _forward_kl_values(t, s, temperature), nll

    @tf.custom_gradient
    def fused(student):
        def gradient(u_kl, u_ce):
            # Not before the gradient flows in: see _forward_kl_fused.
            with tf.control_dependencies([u_kl, u_ce]):
                t, s = ops.cast(teacher, "float32"), ops.cast(student, "float32")

                def at_one():
                    kl_part = _softmax_minus_one_hot(t, labels) * -u_kl[..., None]
                    with tf.control_dependencies([kl_part]):  # then s's buffer is free to reuse
                        return kl_part + _softmax_minus_one_hot(s, labels) * (u_kl + u_ce)[..., None]

                def at_other():
                    kl_part = _forward_kl_gradient(t, s, temperature, u_kl)
                    with tf.control_dependencies([kl_part]):
                        return kl_part + _softmax_minus_one_hot(s, labels) * u_ce[..., None]

                student_gradient = tf.cond(ops.equal(temperature, 1.0), at_one, at_other)
            return ops.cast(student_gradient, student.dtype)

        return _chunked_positions(values, (teacher, student, labels), outputs=2), gradient

    return fused(student_logits)


_forward_kl_fused.divergence = kl_divergence


def _on_raw_logits(fn):
    def per_position(teacher_logits, student_logits, temperature, labels=None):
        return fn(teacher_logits, student_logits)

    return per_position


LOGIT_LOSSES = {
    "reverse_kl": _on_distributions(reverse_kl),
    "jensen_shannon": _on_distributions(jensen_shannon),
    "js": _on_distributions(jensen_shannon),
    "logits_mse": _on_raw_logits(logits_mse),
}
"""keras_kd's logit-loss names, for `LogitsDistillation(loss=...)`."""


def _resolve(loss):
    """Maps a `loss=` entry to `fn(teacher, student, temperature, labels)`,
    which returns one value per position."""
    if loss is None:
        return None
    if isinstance(loss, DistillationLoss):
        raise ValueError(
            f"`loss` received the keras_kd loss {type(loss).__name__}(...), "
            f"which has a temperature of its own, so one of the two "
            f"temperatures would be ignored. Pass it directly as a "
            f"distillation loss: distillation_losses=[{type(loss).__name__}"
            f"(temperature=...)]."
        )
    if isinstance(loss, str) and loss in LOGIT_LOSSES:
        return LOGIT_LOSSES[loss]
    per_sample, core = keras_loss_function(
        loss, "a keras_kd logit loss", "loss='kl_divergence'", names=LOGIT_LOSSES
    )
    if core is keras.losses.kl_divergence:
        return _forward_kl_fused
    if core is keras.losses.categorical_crossentropy:
        return _on_distributions(soft_cross_entropy)

    def on_scaled_logits(teacher_logits, student_logits, temperature, labels=None):
        # As keras.distillation: the Keras loss of t/T and s/T, no T².
        temperature = ops.cast(temperature, "float32")
        teacher = ops.cast(teacher_logits, "float32") / temperature
        student = ops.cast(student_logits, "float32") / temperature
        return per_sample(teacher, student)

    return on_scaled_logits


@keras.saving.register_keras_serializable(package="keras_kd")
class LogitsDistillation(DistillationLoss):
    """Distils the teacher's temperature-softened class distribution.

    With the default `loss="kl_divergence"` this is Hinton et al.'s loss:
    `T² · KL(softmax(t/T) ‖ softmax(s/T))`, computed in float32 from
    `log_softmax`, averaged over samples. The same value results from
    `loss=keras.losses.KLDivergence()`.

    Other `loss` values:

    - `"categorical_crossentropy"` or a `keras.losses.CategoricalCrossentropy`:
      `T² · H(softmax(t/T), softmax(s/T))` (KL plus the teacher's entropy;
      same gradients). Options of the instance are not used.
    - any other loss name, `keras.losses.Loss` or function `f`:
      `mean(f(t / T, s / T))` on the temperature-scaled logits, as in
      `keras.distillation` (e.g. `"mse"` is the MSE of `t/T` and `s/T`).
    - a list or dict of the above (or `None` to skip an output) for models
      with several outputs, as their outputs are structured; a single loss
      applies to every output. The terms are summed.

    If a model's last layer applies softmax, the Distiller hands this loss the
    model's log-probabilities, which give the same softened distributions.

    With `standardize=True` both models' logits are z-scored per position
    (`standardize_logits`) before any of the above (Sun et al. 2024; also
    the named loss `keras_kd.losses.LogitStandardization`, and an option of
    `DKD`).

    Args:
        temperature: softening temperature `T > 0`. Scheduled by
            `keras_kd.callbacks.DistillationScheduler`.
        loss: see above. Defaults to `"kl_divergence"`.
        standardize: z-score teacher and student logits first (logit
            standardization; the temperature is then a "base temperature",
            2 in the authors' recipes).
        name: the name this term is logged under.

    Raises:
        ValueError: if `temperature` is not a positive number, or `loss` is
            unknown or all `None`.

    Example:

    ```python
    loss = keras_kd.LogitsDistillation(temperature=4.0)
    loss.compute_loss(keras.ops.array([[2.0, 1.0, 0.0]]),
                      keras.ops.array([[0.0, 1.0, 2.0]]))  # 16 * KL
    ```

    Reference:
        Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural
        Network", NeurIPS Deep Learning Workshop 2014, arXiv:1503.02531.
    """

    expects_logits = True
    schedulable = ("temperature",)
    _fixed_loss = False  # family members choose their loss themselves
    _loss_name = None

    def __init__(self, temperature=3.0, loss="kl_divergence", standardize=False, name=None):
        self.temperature = check_temperature(temperature)
        self.standardize = check_flag(standardize, "standardize")
        if self._fixed_loss:
            loss = self._loss_name  # None where the class defines divergence()
        self.loss = loss
        self._loss_fns = map_losses(_resolve, loss)
        if not self._fixed_loss and all(
            fn is None for fn in keras.tree.flatten(self._loss_fns)
        ):
            raise ValueError(
                f"`loss` must contain at least one loss, but received "
                f"{loss!r}. Pass e.g. loss='kl_divergence'."
            )
        if name:
            self.name = name

    def validate_outputs(self, teacher_outputs, student_outputs):
        if not isinstance(teacher_outputs, lm.TopK):  # a top-K cache: any vocabulary
            super().validate_outputs(teacher_outputs, student_outputs)

    def validate_model_compatibility(self, teacher, student):
        teacher_shapes = _output_shapes(teacher)
        student_shapes = _output_shapes(student)
        if teacher_shapes is None or student_shapes is None:
            return  # Subclassed model: checked when the step is traced.
        if len(teacher_shapes) != len(student_shapes):
            raise ValueError(
                f"{type(self).__name__} needs as many teacher outputs as "
                f"student outputs, but the teacher has {len(teacher_shapes)} "
                f"and the student {len(student_shapes)}. Give both models the "
                f"same outputs, or name the layers to compare."
            )
        for t_shape, s_shape in zip(teacher_shapes, student_shapes):
            if t_shape[-1] != s_shape[-1]:
                raise ValueError(
                    f"{type(self).__name__} compares class distributions, "
                    f"but the teacher outputs {t_shape[-1]} classes (shape "
                    f"{t_shape}) and the student {s_shape[-1]} (shape "
                    f"{s_shape}). Give the student a final layer with "
                    f"{t_shape[-1]} units (for language models whose "
                    f"vocabularies differ only by padding rows at the end, "
                    f"pass vocabulary_alignment='truncate' to the Distiller)."
                )

    def compute_loss(
        self, teacher_outputs, student_outputs, labels=None, mask=None, **kwargs
    ):
        """Returns the distillation loss, summed over outputs for a structure.

        Args:
            teacher_outputs: teacher logits (or a list/dict, one per output).
            student_outputs: student logits, same structure.
            labels: the batch's class ids, used by `DKD`; `None` when
                unknown (unlabelled or mixed batches).
            mask: real positions of token-level outputs `(batch, sequence)`,
                or `None`: the loss is the mean over real positions, its
                denominator the count of real positions across replicas.
            **kwargs: ignored.

        Returns:
            A scalar float32 tensor.
        """
        if isinstance(teacher_outputs, lm.TopK):
            return masked_mean(self._top_k_kl(teacher_outputs, student_outputs), mask)
        # DKD and DIST define divergence() themselves; the rest resolve `loss`.
        losses = self.divergence if self._loss_fns is None else self._loss_fns
        prepare = standardize_logits if self.standardize else (lambda logits: logits)
        return sum_over_outputs(
            lambda fn, t, s: masked_mean(
                fn(prepare(t), prepare(s), self.temperature, labels), mask
            ),
            losses, teacher_outputs, student_outputs,
        )

    @property
    def fuses_cross_entropy(self):
        """Whether `compute_loss_and_cross_entropy` applies: the forward
        KL (the default loss) without standardization, on one output."""
        return self._loss_fns is _forward_kl_fused and not self.standardize

    def compute_loss_and_cross_entropy(self, teacher_outputs, student_outputs, labels, mask=None):
        """`compute_loss(...)` and the per-position hard-label cross-entropy,
        with one gradient pass for both (see `forward_kl_and_cross_entropy`).

        The Distiller calls it for language models whose hard-label loss is
        `SparseCategoricalCrossentropy(from_logits=True)`, to spare two
        `(batch, sequence, vocabulary)` buffers per step.

        Args:
            teacher_outputs: teacher logits `(batch, sequence, vocabulary)`.
            student_outputs: student logits, the same shape.
            labels: `(batch, sequence)` token ids.
            mask: real positions, as in `compute_loss`.

        Returns:
            `(loss, cross_entropy)`: the scalar loss `compute_loss` returns,
            and the `(batch, sequence)` negative log-likelihoods of `labels`
            (for the hard-label loss's own reduction).
        """
        kl, cross_entropy = forward_kl_and_cross_entropy(
            teacher_outputs, student_outputs, self.temperature, labels)
        return masked_mean(kl, mask), cross_entropy

    def _top_k_kl(self, top, student_logits):
        """The forward KL from a top-K teacher cache (see `lm.top_k_kl`)."""
        if self.standardize:
            raise ValueError(
                f"{self.name}: the teacher outputs come from a top-K cache, "
                f"which holds no full logits to standardize, but this loss "
                f"has standardize=True. Cache full logits (top_k=None), or "
                f"distil without standardization."
            )
        if getattr(self._loss_fns, "divergence", None) is not kl_divergence:
            raise ValueError(
                f"{self.name}: the teacher outputs come from a top-K cache, "
                f"which supports the forward KL (LogitsDistillation with "
                f"loss='kl_divergence') only, but this loss is "
                f"{type(self).__name__}" + (f"(loss={self.loss!r})" if self.loss else "")
                + ". Cache full logits (top_k=None) for other losses."
            )
        # The Distiller holds the temperature in a variable (schedules set it): checked as the step runs.
        one = tf.debugging.assert_equal(
            ops.cast(self.temperature, "float32"), 1.0,
            message="A top-K teacher cache holds log-probabilities at temperature 1; "
            "set the LogitsDistillation temperature to 1.0 or cache full logits.",
        )
        vocabulary = student_logits.shape[-1]
        # Out-of-range ids would fail in a gather on CPU, but read 0 on a GPU.
        in_range = tf.debugging.assert_less(
            tf.reduce_max(ops.cast(top.ids, "int32")), vocabulary,
            message=f"The top-K teacher cache holds token ids beyond the student "
            f"vocabulary of {vocabulary} tokens: it was built with another teacher "
            f"or tokenizer. Build the cache with the teacher of this Distiller.",
        )
        with tf.control_dependencies([one, in_range]):
            return lm.top_k_kl(top, student_logits)

    def divergence(self, teacher_logits, student_logits, temperature, labels=None):
        """The per-position loss between one teacher and student output."""
        return self._loss_fns(teacher_logits, student_logits, temperature, labels)

    def get_config(self):
        config = super().get_config()
        config["temperature"] = as_float(self.temperature)
        if not self._fixed_loss:
            config["loss"] = map_losses(serialize_loss, self.loss)
        if self.standardize:  # only the classes that take the argument set it
            config["standardize"] = True
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if "loss" in config:
            config["loss"] = map_losses(deserialize_loss, config["loss"])
        return cls(**config)


class _FixedLogitLoss(LogitsDistillation):
    """A member of the logit-loss family: `loss` is fixed by the class."""

    _fixed_loss = True

    def __init__(self, temperature=1.0, name=None):
        super().__init__(temperature=temperature, name=name)


@keras.saving.register_keras_serializable(package="keras_kd")
class ReverseKL(_FixedLogitLoss):
    """Reverse KL, `T² · KL(student_T ‖ teacher_T)`: mode-seeking.

    The student is penalized for putting mass where the teacher has little,
    rather than for missing any of the teacher's mass.

    Args:
        temperature: softening temperature `T > 0`.
        name: the name this term is logged under.

    Example:

    ```python
    keras_kd.losses.ReverseKL(temperature=1.0)
    # or keras_kd.LogitsDistillation(loss="reverse_kl")
    ```

    Reference:
        Gu, Dong, Wei & Huang, "MiniLLM: Knowledge Distillation of Large
        Language Models", ICLR 2024, arXiv:2306.08543.
    """

    _loss_name = "reverse_kl"


@keras.saving.register_keras_serializable(package="keras_kd")
class JensenShannon(_FixedLogitLoss):
    """Jensen-Shannon divergence of the softened distributions, times T².

    Symmetric and bounded (by `T² log 2`).

    Args:
        temperature: softening temperature `T > 0`.
        name: the name this term is logged under.

    Example:

    ```python
    keras_kd.losses.JensenShannon(temperature=2.0)
    # or keras_kd.LogitsDistillation(loss="jensen_shannon")
    ```

    Reference:
        Agarwal et al., "On-Policy Distillation of Language Models: Learning
        from Self-Generated Mistakes" (generalized JSD), ICLR 2024,
        arXiv:2306.13649.
    """

    _loss_name = "jensen_shannon"


@keras.saving.register_keras_serializable(package="keras_kd")
class GeneralizedJSD(LogitsDistillation):
    """Generalized Jensen-Shannon divergence of the softened distributions, times T².

    `beta KL(p ‖ m) + (1 - beta) KL(q ‖ m)` with `m = beta p + (1 - beta) q`,
    `p` the teacher's and `q` the student's distribution at temperature `T`.
    `beta=0` is the forward KL (as `LogitsDistillation`), `beta=1` the
    reverse KL (as `ReverseKL`), `beta=0.5` the Jensen-Shannon divergence;
    this is TRL's naming (see `generalized_jsd` for the paper's). Masked for
    token-level outputs like every logit loss.

    Args:
        beta: the teacher's weight in the mixture, in [0, 1].
        temperature: softening temperature `T > 0`.
        name: the name this term is logged under.

    Raises:
        ValueError: if a number is out of range.

    Example:

    ```python
    keras_kd.Distiller(teacher_lm, student_lm, keras_kd.losses.GeneralizedJSD(beta=0.5))
    ```

    Reference:
        Agarwal et al., "On-Policy Distillation of Language Models: Learning
        from Self-Generated Mistakes", ICLR 2024, arXiv:2306.13649.
    """

    _fixed_loss = True

    def __init__(self, beta=0.5, temperature=1.0, name=None):
        super().__init__(temperature=temperature, name=name)
        self.beta = check_number(beta, "beta", 0.0, 1.0)
        self._divergence = _on_distributions(
            lambda log_p, log_q: generalized_jsd(log_p, log_q, self.beta)
        )

    def divergence(self, teacher_logits, student_logits, temperature, labels=None):
        return self._divergence(teacher_logits, student_logits, temperature)

    def get_config(self):
        return {**super().get_config(), "beta": self.beta}


@keras.saving.register_keras_serializable(package="keras_kd")
class LogitMSE(_FixedLogitLoss):
    """Mean squared error between raw logits (logit regression).

    No temperature is applied; the Distiller averages the logits of several
    teachers (rather than mixing their distributions) for this loss.

    Args:
        name: the name this term is logged under.

    Example:

    ```python
    keras_kd.losses.LogitMSE()  # or keras_kd.LogitsDistillation(loss="logits_mse")
    ```

    Reference:
        Ba & Caruana, "Do Deep Nets Really Need to be Deep?", NeurIPS 2014,
        arXiv:1312.6184.
    """

    _loss_name = "logits_mse"
    schedulable = ()
    mixes_teachers = "logits"

    def __init__(self, name=None):
        super().__init__(temperature=1.0, name=name)

    def get_config(self):
        config = super().get_config()
        del config["temperature"]
        return config


@keras.saving.register_keras_serializable(package="keras_kd")
class LogitStandardization(LogitsDistillation):
    """KD on z-scored logits: `T² · KL(softmax(z(t)/T) ‖ softmax(z(s)/T))`.

    `z` standardizes each position's logits over the classes
    (`standardize_logits`: minus their mean, over their standard deviation
    plus 1e-7), so the student learns the teacher's logit relations rather
    than their magnitude; `T` is the base temperature. The same loss is
    `LogitsDistillation(temperature, standardize=True)`; `DKD` takes
    `standardize=True` too. Masked for token-level outputs like every
    logit loss.

    Args:
        temperature: base temperature `T > 0` (2 in the authors' CIFAR-100
            commands, which also raise the distillation weight,
            `--kd-weight 9`).
        name: the name this term is logged under.

    Raises:
        ValueError: if `temperature` is not a positive number.

    Example:

    ```python
    keras_kd.Distiller(teacher, student, keras_kd.losses.LogitStandardization())
    ```

    Reference:
        Sun, Ren, Li, Wang & Cao, "Logit Standardization in Knowledge
        Distillation", CVPR 2024, arXiv:2403.01427.
    """

    def __init__(self, temperature=2.0, name=None):
        super().__init__(temperature=temperature, standardize=True, name=name)

    def get_config(self):
        config = super().get_config()
        del config["loss"], config["standardize"]
        return config


@keras.saving.register_keras_serializable(package="keras_kd")
class DKD(LogitsDistillation):
    """Decoupled KD: target-class and non-target-class terms, weighted apart.

    `alpha · TCKD + beta · NCKD`, both times T²: TCKD is the KL between the
    binary (target vs. rest) distributions of teacher and student, NCKD the
    KL between their distributions over the non-target classes. The target
    class is the label when the Distiller has one for every sample (not
    under mixing augmentations), otherwise the teacher's top-1 class.
    Computed in log space.

    Args:
        temperature: softening temperature `T > 0` (4 in the paper).
        alpha: weight of TCKD (1 in the paper).
        beta: weight of NCKD (8 in the paper for CIFAR-100).
        standardize: z-score both models' logits first (logit
            standardization, Sun et al. 2024, who pair it with a base
            temperature of 2); the target class is unchanged by it.
        name: the name this term is logged under.

    Raises:
        ValueError: if a number is out of range.

    Example:

    ```python
    keras_kd.Distiller(teacher, student, keras_kd.losses.DKD(), student_loss_weight=0.5)
    ```

    Reference:
        Zhao, Cui, Song, Qiu & Liang, "Decoupled Knowledge Distillation",
        CVPR 2022, arXiv:2203.08679. With `standardize=True`: Sun, Ren, Li,
        Wang & Cao, "Logit Standardization in Knowledge Distillation", CVPR
        2024, arXiv:2403.01427.
    """

    schedulable = ("temperature", "alpha", "beta")
    uses_labels = True
    _fixed_loss = True

    def __init__(self, temperature=4.0, alpha=1.0, beta=8.0, standardize=False, name=None):
        super().__init__(temperature=temperature, standardize=standardize, name=name)
        self.alpha = check_number(alpha, "alpha", minimum=0.0)
        self.beta = check_number(beta, "beta", minimum=0.0)

    def divergence(self, teacher_logits, student_logits, temperature, labels=None):
        classes = teacher_logits.shape[-1]
        if labels is None:
            labels = ops.argmax(teacher_logits, axis=-1)
        elif len(labels.shape) == len(teacher_logits.shape) and labels.shape[-1] == classes:
            labels = ops.argmax(labels, axis=-1)  # one-hot labels
        labels = ops.reshape(ops.cast(labels, "int32"), ops.shape(teacher_logits)[:-1])
        target = ops.cast(ops.one_hot(labels, classes), "bool")
        log_p = log_softmax_at(teacher_logits, temperature)
        log_q = log_softmax_at(student_logits, temperature)

        def binary(log_probs):  # log [p(target), p(rest)]
            log_target = ops.sum(ops.where(target, log_probs, 0.0), axis=-1)
            log_rest = ops.logsumexp(ops.where(target, -np.inf, log_probs), axis=-1)
            return ops.stack([log_target, log_rest], axis=-1)

        def kl(log_a, log_b, mask=None):  # per position
            terms = ops.exp(log_a) * (log_a - log_b)
            if mask is not None:
                terms = ops.where(mask, 0.0, terms)
            return ops.sum(terms, axis=-1)

        def non_target(log_probs):  # log-probabilities renormalized over the rest
            rest = ops.where(target, -np.inf, log_probs)
            return rest - ops.logsumexp(rest, axis=-1, keepdims=True)

        tckd = kl(binary(log_p), binary(log_q))
        nckd = kl(non_target(log_p), non_target(log_q), mask=target)
        t_squared = ops.square(ops.cast(temperature, "float32"))
        return (
            ops.cast(self.alpha, "float32") * tckd
            + ops.cast(self.beta, "float32") * nckd
        ) * t_squared

    def get_config(self):
        return {**super().get_config(), "alpha": as_float(self.alpha), "beta": as_float(self.beta)}


@keras.saving.register_keras_serializable(package="keras_kd")
class DIST(LogitsDistillation):
    """DIST: matches inter- and intra-class Pearson relations of predictions.

    With `p = softmax(t/T)`, `q = softmax(s/T)` of shape `(batch, classes)`:
    inter-class = `1 - mean_i pearson(p_i, q_i)` (each sample's class
    ranking), intra-class = the same over the transposed matrices (each
    class's ranking of the batch's samples); the loss is
    `T² (beta · inter + gamma · intra)`. The intra-class term relates the
    samples of a batch: under `tf.distribute` it uses each replica's batch.

    Args:
        temperature: softening temperature `T > 0` (1 in the paper's code).
        beta: weight of the inter-class relation.
        gamma: weight of the intra-class relation.
        name: the name this term is logged under.

    Raises:
        ValueError: if a number is out of range.

    Example:

    ```python
    keras_kd.Distiller(teacher, student, keras_kd.losses.DIST())
    ```

    Reference:
        Huang, You, Wang, Qian & Xu, "Knowledge Distillation from A Stronger
        Teacher", NeurIPS 2022, arXiv:2205.10536.
    """

    schedulable = ("temperature", "beta", "gamma")
    _fixed_loss = True

    def __init__(self, temperature=1.0, beta=1.0, gamma=1.0, name=None):
        super().__init__(temperature=temperature, name=name)
        self.beta = check_number(beta, "beta", minimum=0.0)
        self.gamma = check_number(gamma, "gamma", minimum=0.0)

    def compute_loss(self, teacher_outputs, student_outputs, mask=None, **kwargs):
        if mask is not None:
            raise ValueError(
                "DIST relates the positions of a batch to each other, so a "
                "token mask cannot take padding out of it. For token-level "
                "outputs use LogitsDistillation, ReverseKL or GeneralizedJSD."
            )
        return super().compute_loss(teacher_outputs, student_outputs, **kwargs)

    def divergence(self, teacher_logits, student_logits, temperature, labels=None):
        classes = teacher_logits.shape[-1]
        p = ops.reshape(ops.exp(log_softmax_at(teacher_logits, temperature)), (-1, classes))
        q = ops.reshape(ops.exp(log_softmax_at(student_logits, temperature)), (-1, classes))
        inter = 1.0 - ops.mean(_pearson(p, q, axis=1))
        intra = 1.0 - ops.mean(_pearson(p, q, axis=0))
        t_squared = ops.square(ops.cast(temperature, "float32"))
        return t_squared * (
            ops.cast(self.beta, "float32") * inter
            + ops.cast(self.gamma, "float32") * intra
        )

    def get_config(self):
        return {**super().get_config(), "beta": as_float(self.beta), "gamma": as_float(self.gamma)}


@keras.saving.register_keras_serializable(package="keras_kd")
class MLKD(DistillationLoss):
    """Multi-level logit distillation: instance, batch and class alignment.

    With `p = softmax(t/T)`, `q = softmax(s/T)` of shape `(batch, classes)`
    (`B` samples, `C` classes), summed over the temperatures `T`:

    - instance level: `T² · mean_i KL(p_i ‖ q_i)`;
    - batch level: `sum((p pᵀ - q qᵀ)²) / B`, the samples' similarity (Gram)
      matrices of predictions;
    - class level: `sum((pᵀ p - qᵀ q)²) / C`, the classes' correlation
      matrices.

    This is the authors' `kd_loss`, `bc_loss` and `cc_loss` on one view of
    the batch. Left out, from their training recipe rather than the loss:
    the second, strongly augmented view of each batch (use
    `Distiller(augmentation=...)` for augmentation) and their confidence
    masks (samples, resp. classes, whose teacher confidence is at most the
    batch median). In their code those masks multiply terms that are already
    averaged, so they scale each term by the kept fraction (about one half)
    rather than select samples; a `distillation_loss_weights` entry scales
    the same way. The batch and class terms relate the samples of a batch
    to each other: under `tf.distribute` they use each replica's batch, and
    a token mask cannot take padding out of them (refused).

    Args:
        temperatures: the temperatures `T > 0` to sum over (the authors'
            `2, 3, 4, 5, 6`).
        name: the name this term is logged under.

    Raises:
        ValueError: if `temperatures` is empty or holds a number that is not
            positive; at the step, if the batch carries a token mask.

    Example:

    ```python
    keras_kd.Distiller(teacher, student, keras_kd.losses.MLKD())
    ```

    Reference:
        Jin, Wang & Lin, "Multi-Level Logit Distillation", CVPR 2023.
    """

    expects_logits = True
    validate_model_compatibility = LogitsDistillation.validate_model_compatibility

    def __init__(self, temperatures=(2.0, 3.0, 4.0, 5.0, 6.0), name=None):
        if isinstance(temperatures, numbers.Real):
            temperatures = [temperatures]
        if isinstance(temperatures, np.ndarray):
            temperatures = temperatures.ravel().tolist()
        if not isinstance(temperatures, (list, tuple)) or not temperatures:
            raise ValueError(
                f"`temperatures` must be a positive number or a non-empty list "
                f"of them, "
                f"but received {temperatures!r}. Pass e.g. "
                f"temperatures=(2.0, 3.0, 4.0, 5.0, 6.0)."
            )
        self.temperatures = tuple(
            check_temperature(t, f"temperatures[{i}]")
            for i, t in enumerate(temperatures)
        )
        if name:
            self.name = name

    def compute_loss(self, teacher_outputs, student_outputs, mask=None, **kwargs):
        """Returns the multi-level loss, summed over outputs for a structure.

        Args:
            teacher_outputs: teacher logits `(batch, classes)` (or a
                list/dict of them).
            student_outputs: student logits, same structure.
            mask: must be `None` (see the class).
            **kwargs: ignored.

        Returns:
            A scalar float32 tensor.

        Raises:
            ValueError: for a token mask or a top-K teacher cache.
        """
        if mask is not None:
            raise ValueError(
                "MLKD's batch- and class-level terms relate the positions of "
                "a batch to each other, so a token mask cannot take padding "
                "out of them. For token-level outputs use LogitsDistillation, "
                "ReverseKL or GeneralizedJSD."
            )
        if isinstance(teacher_outputs, lm.TopK):
            raise ValueError(
                "MLKD compares full class distributions, but the teacher "
                "outputs come from a top-K cache. Cache full logits "
                "(top_k=None)."
            )
        return sum_over_outputs(
            lambda _, t, s: self.divergence(t, s), self, teacher_outputs, student_outputs
        )

    def divergence(self, teacher_logits, student_logits):
        """The loss between one teacher and student output (a scalar)."""
        classes = teacher_logits.shape[-1]
        teacher = ops.reshape(ops.cast(teacher_logits, "float32"), (-1, classes))
        student = ops.reshape(ops.cast(student_logits, "float32"), (-1, classes))
        batch = ops.cast(ops.shape(teacher)[0], "float32")
        total = []
        for temperature in self.temperatures:
            log_p = log_softmax_at(teacher, temperature)
            log_q = log_softmax_at(student, temperature)
            p, q = ops.exp(log_p), ops.exp(log_q)
            instance = ops.mean(kl_divergence(log_p, log_q)) * temperature**2
            samples = ops.sum(ops.square(p @ ops.transpose(p) - q @ ops.transpose(q))) / batch
            class_level = ops.sum(ops.square(ops.transpose(p) @ p - ops.transpose(q) @ q)) / classes
            total.append(instance + samples + class_level)
        return functools.reduce(ops.add, total)

    def get_config(self):
        return {**super().get_config(), "temperatures": list(self.temperatures)}


def _pearson(a, b, axis, epsilon=1e-8):
    """Pearson correlation of `a` and `b` along `axis` (authors' epsilon)."""
    a = a - ops.mean(a, axis=axis, keepdims=True)
    b = b - ops.mean(b, axis=axis, keepdims=True)
    norms = ops.sqrt(ops.sum(a * a, axis=axis)) * ops.sqrt(ops.sum(b * b, axis=axis))
    return ops.sum(a * b, axis=axis) / (norms + epsilon)


def mixture_logits(teacher_logits, weights, temperature, mixes="distributions"):
    """Several teachers' logits as one: the weighted mixture of distributions.

    Returns `T · log(sum_i w_i softmax(t_i / T))`, whose softmax at
    temperature `T` is exactly the mixture; with `mixes="logits"`, the
    weighted mean of the logits.

    Args:
        teacher_logits: a list of logits tensors of equal shape.
        weights: a list of floats summing to 1.
        temperature: the loss's temperature.
        mixes: `"distributions"` or `"logits"`.

    Returns:
        A float32 tensor shaped like one teacher's logits.
    """
    if mixes == "logits":
        return sum(
            w * ops.cast(t, "float32") for w, t in zip(weights, teacher_logits)
        )
    log_mixture = ops.logsumexp(
        ops.stack(
            [
                np.log(w) + log_softmax_at(t, temperature)
                for w, t in zip(weights, teacher_logits)
                if w > 0
            ]
        ),
        axis=0,
    )
    return ops.cast(temperature, "float32") * log_mixture


def _output_shapes(model):
    """The shapes of a Functional/Sequential model's outputs, else `None`."""
    try:
        outputs = model.outputs
    except (AttributeError, ValueError):
        return None
    if not outputs:
        return None
    return [tuple(o.shape) for o in outputs]
