"""Logit distillation: thin loss classes over the functions of `divergences`.

Every class here turns a teacher output and a student output into a loss the
same way, in `LogitsDistillation.compute_loss` and `per_position`: z-score
the logits if asked (`standardize`), soften both at the temperature
(`log_softmax(logits / T)`), apply the divergence (`call`, one value per
position), multiply by `T²`, then take the mean over real positions
(`masked_mean`) and sum over the models' outputs. A subclass is its
constructor and its `call` (see `_OwnDivergence`); the math lives in
`keras_kd.losses.divergences`, the memory-sparing forward-KL kernel in
`keras_kd.losses._fused_kl`.
"""

import importlib
import numbers
import warnings

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_kd import _validation, lm
from keras_kd._validation import as_float, check_flag, check_number, check_temperature
from keras_kd.losses import divergences
from keras_kd.losses._fused_kl import (  # noqa: F401 - _chunked_positions, _forward_kl_values: re-exported for tests/test_lm.py
    _chunked_positions,
    _forward_kl_fused,
    _forward_kl_values,
    forward_kl_and_cross_entropy,
)
from keras_kd.losses.base import (
    DistillationLoss,
    deserialize_loss,
    keras_loss_function,
    map_losses,
    masked_mean,
    serialize_loss,
    sum_over_outputs,
)

# Where these functions lived before `divergences`: importable from here too.
from keras_kd.losses.divergences import (
    generalized_jsd,
    jensen_shannon,
    kl_divergence,
    log_softmax_at,
    logits_mse,
    reverse_kl,
    soft_cross_entropy,
    standardize_logits,
)


class _OnLogits:
    """A term computed from the logits themselves, `fn(teacher, student,
    temperature) -> per-position values`: it softens (or not) on its own.

    Every other term is a divergence `fn(log_p, log_q, labels)` of the
    softened log-probabilities, which `LogitsDistillation.per_position`
    softens and scales by T².
    """

    def __init__(self, fn):
        self.fn = fn


_FORWARD_KL = _OnLogits(_forward_kl_fused)
"""The default term: `T² · KL` with a hand-written, memory-sparing gradient."""


def softened(divergence, teacher_logits, student_logits, temperature, labels=None):
    """`T² · divergence(log_softmax(t/T), log_softmax(s/T), labels)`.

    The one place where keras_kd softens logits and scales a divergence by
    `T²` (Hinton et al.: the gradients keep their size as `T` changes).

    Args:
        divergence: `fn(log_p, log_q, labels)` returning per-position values
            (e.g. `lambda p, q, _: divergences.reverse_kl(p, q)`).
        teacher_logits: shape `(..., classes)`.
        student_logits: same shape.
        temperature: `T > 0`, a number or a scalar tensor/variable.
        labels: passed to `divergence` (class ids, or `None`).

    Returns:
        A float32 tensor: `divergence`'s values times `T²`.

    Reference:
        Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural
        Network", NeurIPS Deep Learning Workshop 2014, arXiv:1503.02531.
    """
    log_p = log_softmax_at(teacher_logits, temperature)
    log_q = log_softmax_at(student_logits, temperature)
    return divergence(log_p, log_q, labels) * ops.square(ops.cast(temperature, "float32"))


def _apply(term, teacher_logits, student_logits, temperature, labels):
    """A term's per-position values: an `_OnLogits` on the logits, any other
    term (a divergence) softened and scaled by T²."""
    if isinstance(term, _OnLogits):
        return term.fn(teacher_logits, student_logits, temperature)
    return softened(term, teacher_logits, student_logits, temperature, labels)


def _on_scaled_logits(per_sample):
    """A Keras loss applied as keras.distillation does: to `t/T` and `s/T`, no T²."""

    def on_logits(teacher_logits, student_logits, temperature):
        temperature = ops.cast(temperature, "float32")
        teacher = ops.cast(teacher_logits, "float32") / temperature
        student = ops.cast(student_logits, "float32") / temperature
        return per_sample(teacher, student)

    return _OnLogits(on_logits)


def _term_of(loss):
    """The term of one `loss=` entry of `LogitsDistillation`: a divergence of
    log-probabilities, an `_OnLogits`, or `None` (an output left out)."""
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
    from keras_kd import losses  # the table of names; imports this module

    named = losses.lookup(loss) if isinstance(loss, str) else None
    if named is LogitsDistillation:
        return _FORWARD_KL
    if named in _APPLIED_BY_NAME:
        return named()._terms  # its divergence, softened at this loss's temperature
    if named is not None:
        raise ValueError(losses.refusal(loss, named, "LogitsDistillation", _names_here()))
    per_sample, core = keras_loss_function(
        loss, "a keras_kd logit loss", "loss='kl_divergence'", names=_names_here()
    )
    if core is keras.losses.kl_divergence:
        return _FORWARD_KL
    if core is keras.losses.categorical_crossentropy:
        return lambda log_p, log_q, labels: soft_cross_entropy(log_p, log_q)
    return _on_scaled_logits(per_sample)


def _names_here():
    """The names of the table `LogitsDistillation(loss=...)` applies."""
    from keras_kd import losses

    return sorted(losses.name_of(cls) for cls in (LogitsDistillation, *_APPLIED_BY_NAME))


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
    - a name of `keras_kd.losses.LOSSES` whose loss is a plain divergence,
      `"reverse_kl"`, `"jensen_shannon"`, `"generalized_jsd"` (at its
      default `beta=0.5`) or `"logits_mse"`: that class's divergence at this
      loss's temperature (`loss="reverse_kl"` at `T` is
      `ReverseKL(temperature=T)`; `LogitMSE` takes no temperature).
      `"logits_distillation"` is the default KL. The names of losses with
      settings of their own (`"dkd"`, `"dist"`, `"mlkd"`, `"ctkd"`,
      `"logit_standardization"`) and of feature losses are refused, with
      how to pass them.
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

    def __init__(self, temperature=3.0, loss="kl_divergence", standardize=False, name=None):
        self.temperature = check_temperature(temperature)
        self.standardize = check_flag(standardize, "standardize")
        self.loss = loss
        self._terms = self._resolve(loss)
        if name:
            self.name = name

    def _resolve(self, loss):
        """The terms `loss` names, one per model output (see `per_position`)."""
        terms = map_losses(_term_of, loss)
        if all(term is None for term in keras.tree.flatten(terms)):
            raise ValueError(
                f"`loss` must contain at least one loss, but received "
                f"{loss!r}. Pass e.g. loss='kl_divergence'."
            )
        return terms

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
        return sum_over_outputs(
            lambda term, t, s: masked_mean(self.per_position(term, t, s, labels), mask),
            self._terms, teacher_outputs, student_outputs,
        )

    def per_position(self, term, teacher_logits, student_logits, labels=None):
        """One output's loss before the mean: standardize, soften, diverge, `T²`.

        Args:
            term: this output's term (a divergence of log-probabilities, or
                one computed from the logits themselves).
            teacher_logits: shape `(..., classes)`.
            student_logits: same shape.
            labels: the batch's class ids, or `None`.

        Returns:
            Per-position float32 values (one value for losses that relate
            the whole batch).
        """
        if self.standardize:
            teacher_logits = standardize_logits(teacher_logits)
            student_logits = standardize_logits(student_logits)
        return _apply(term, teacher_logits, student_logits, self.temperature, labels)

    def divergence(self, teacher_logits, student_logits, temperature, labels=None):
        """Deprecated: the per-position loss of one output at `temperature`.

        Use `per_position` (this loss's own temperature and standardization),
        or the functions of `keras_kd.losses.divergences` with `softened`.
        """
        warnings.warn(
            f"{type(self).__name__}.divergence(teacher_logits, student_logits, temperature) is "
            f"deprecated; use keras_kd.losses.divergences (with keras_kd.losses.logits.softened) "
            f"or {type(self).__name__}.per_position.", DeprecationWarning, stacklevel=2)
        return _apply(self._terms, teacher_logits, student_logits, temperature, labels)

    @property
    def fuses_cross_entropy(self):
        """Whether `compute_loss_and_cross_entropy` applies: the forward
        KL (the default loss) without standardization, on one output."""
        return self._terms is _FORWARD_KL and not self.standardize

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
        if self._terms is not _FORWARD_KL:
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

    def get_config(self):
        config = super().get_config()
        config["temperature"] = as_float(self.temperature)
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


class _OwnDivergence(LogitsDistillation):
    """A logit loss whose divergence is its own `call`, not a `loss=` argument.

    A subclass defines `call(log_p, log_q, labels=None)`: the divergence of
    one output's log-probabilities at the temperature (`(..., classes)`
    each; `labels` the batch's class ids or `None`), per position, as the
    functions of `keras_kd.losses.divergences`. `per_position` softens and
    scales it by T², `compute_loss` averages it.

    `loss` stays the name the class is registered under where it has always
    been set (ReverseKL, JensenShannon, LogitMSE; messages show it), else
    `None`; it is not serialized.
    """

    def _resolve(self, loss):
        return self.call

    def get_config(self):
        config = super().get_config()
        del config["loss"]
        return config


@keras.saving.register_keras_serializable(package="keras_kd")
class ReverseKL(_OwnDivergence):
    """Reverse KL, `T² · KL(student_T ‖ teacher_T)`: mode-seeking.

    The student is penalized for putting mass where the teacher has little,
    rather than for missing any of the teacher's mass.

    Args:
        temperature: softening temperature `T > 0`.
        name: the name this term is logged under.

    Example:

    ```python
    keras_kd.losses.ReverseKL(temperature=1.0)
    # the same: keras_kd.LogitsDistillation(temperature=1.0, loss="reverse_kl")
    ```

    Reference:
        Gu, Dong, Wei & Huang, "MiniLLM: Knowledge Distillation of Large
        Language Models", ICLR 2024, arXiv:2306.08543.
    """

    def __init__(self, temperature=1.0, name=None):
        super().__init__(temperature=temperature, loss="reverse_kl", name=name)

    def call(self, log_p, log_q, labels=None):
        return reverse_kl(log_p, log_q)


@keras.saving.register_keras_serializable(package="keras_kd")
class JensenShannon(_OwnDivergence):
    """Jensen-Shannon divergence of the softened distributions, times T².

    Symmetric and bounded (by `T² log 2`).

    Args:
        temperature: softening temperature `T > 0`.
        name: the name this term is logged under.

    Example:

    ```python
    keras_kd.losses.JensenShannon(temperature=2.0)
    # the same: keras_kd.LogitsDistillation(temperature=2.0, loss="jensen_shannon")
    ```

    Reference:
        Agarwal et al., "On-Policy Distillation of Language Models: Learning
        from Self-Generated Mistakes" (generalized JSD), ICLR 2024,
        arXiv:2306.13649.
    """

    def __init__(self, temperature=1.0, name=None):
        super().__init__(temperature=temperature, loss="jensen_shannon", name=name)

    def call(self, log_p, log_q, labels=None):
        return jensen_shannon(log_p, log_q)


@keras.saving.register_keras_serializable(package="keras_kd")
class GeneralizedJSD(_OwnDivergence):
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

    def __init__(self, beta=0.5, temperature=1.0, name=None):
        super().__init__(temperature=temperature, loss=None, name=name)
        self.beta = check_number(beta, "beta", 0.0, 1.0)

    def call(self, log_p, log_q, labels=None):
        return generalized_jsd(log_p, log_q, self.beta)

    def get_config(self):
        return {**super().get_config(), "beta": self.beta}


@keras.saving.register_keras_serializable(package="keras_kd")
class LogitMSE(_OwnDivergence):
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

    schedulable = ()
    mixes_teachers = "logits"

    def __init__(self, name=None):
        super().__init__(temperature=1.0, loss="logits_mse", name=name)

    def _resolve(self, loss):
        return _OnLogits(lambda teacher, student, temperature: logits_mse(teacher, student))

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
class DKD(_OwnDivergence):
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

    def __init__(self, temperature=4.0, alpha=1.0, beta=8.0, standardize=False, name=None):
        super().__init__(temperature=temperature, loss=None, standardize=standardize, name=name)
        self.alpha = check_number(alpha, "alpha", minimum=0.0)
        self.beta = check_number(beta, "beta", minimum=0.0)

    def call(self, log_p, log_q, labels=None):
        classes = log_p.shape[-1]
        if labels is None:  # the teacher's top class
            labels = ops.argmax(log_p, axis=-1)
        elif len(labels.shape) == len(log_p.shape) and labels.shape[-1] == classes:
            labels = ops.argmax(labels, axis=-1)  # one-hot labels
        labels = ops.reshape(ops.cast(labels, "int32"), ops.shape(log_p)[:-1])
        return divergences.dkd(log_p, log_q, labels, self.alpha, self.beta)

    def get_config(self):
        return {**super().get_config(), "alpha": as_float(self.alpha), "beta": as_float(self.beta)}


@keras.saving.register_keras_serializable(package="keras_kd")
class DIST(_OwnDivergence):
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

    def __init__(self, temperature=1.0, beta=1.0, gamma=1.0, name=None):
        super().__init__(temperature=temperature, loss=None, name=name)
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

    def call(self, log_p, log_q, labels=None):
        return divergences.dist(log_p, log_q, self.beta, self.gamma)

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
            lambda _, t, s: divergences.mlkd(t, s, self.temperatures),
            self, teacher_outputs, student_outputs,
        )

    def divergence(self, teacher_logits, student_logits):
        """Deprecated: `keras_kd.losses.divergences.mlkd(t, s, self.temperatures)`."""
        warnings.warn(
            "MLKD.divergence(teacher_logits, student_logits) is deprecated; use "
            "keras_kd.losses.divergences.mlkd(teacher_logits, student_logits, temperatures).",
            DeprecationWarning, stacklevel=2)
        return divergences.mlkd(teacher_logits, student_logits, self.temperatures)

    def get_config(self):
        return {**super().get_config(), "temperatures": list(self.temperatures)}


_APPLIED_BY_NAME = (ReverseKL, JensenShannon, GeneralizedJSD, LogitMSE)
"""The classes whose whole loss is a divergence at a temperature (or of raw
logits): `LogitsDistillation(loss=<their name>)` applies it at its own
temperature, as `<Class>(temperature=T)` would. The other logit losses take
labels (DKD), relate the batch (DIST), standardize (LogitStandardization) or
set their own temperatures (MLKD, CTKD): as `loss=` they are refused, with
how to pass them."""


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



__getattr__ = _validation.moved_attributes(__name__, {"LOGIT_LOSSES": (
    "keras_kd.losses.logits.LOGIT_LOSSES is deprecated; use keras_kd.losses.LOGIT_LOSSES "
    "(name -> class, read from keras_kd.losses.LOSSES).",
    lambda: importlib.import_module("keras_kd.losses").LOGIT_LOSSES)})

__all__ = [
    "DIST",
    "DKD",
    "GeneralizedJSD",
    "JensenShannon",
    "LogitMSE",
    "LogitStandardization",
    "LogitsDistillation",
    "MLKD",
    "ReverseKL",
    "forward_kl_and_cross_entropy",
    "generalized_jsd",
    "jensen_shannon",
    "kl_divergence",
    "log_softmax_at",
    "logits_mse",
    "mixture_logits",
    "reverse_kl",
    "soft_cross_entropy",
    "softened",
    "standardize_logits",
]
