"""Logit distillation: losses between the teacher's and the student's logits."""

import keras
from keras import ops

from keras_kd.losses.base import (
    DistillationLoss,
    as_float,
    check_number,
    deserialize_loss,
    map_losses,
    serialize_loss,
)


def log_softmax_at(logits, temperature):
    """Log-probabilities of `logits / temperature`, in float32."""
    logits = ops.cast(logits, "float32")
    return ops.log_softmax(logits / ops.cast(temperature, "float32"), axis=-1)


def _mean_over_samples(per_position):
    """Mean of a per-position value over every axis (batch, time, ...)."""
    return ops.mean(per_position)


def kl_divergence(teacher_logits, student_logits, temperature):
    """KL(teacher_T || student_T) times T², averaged over samples.

    Computed from log-probabilities, so it stays exact where probabilities
    underflow (no clipping).
    """
    log_p = log_softmax_at(teacher_logits, temperature)
    log_q = log_softmax_at(student_logits, temperature)
    kl = ops.sum(ops.exp(log_p) * (log_p - log_q), axis=-1)
    return _mean_over_samples(kl) * ops.square(ops.cast(temperature, "float32"))


def soft_cross_entropy(teacher_logits, student_logits, temperature):
    """Cross-entropy H(teacher_T, student_T) times T², averaged over samples.

    Equals `kl_divergence` plus the teacher's entropy (a constant for the
    student), so it has the same gradients.
    """
    log_p = log_softmax_at(teacher_logits, temperature)
    log_q = log_softmax_at(student_logits, temperature)
    cross_entropy = -ops.sum(ops.exp(log_p) * log_q, axis=-1)
    return _mean_over_samples(cross_entropy) * ops.square(
        ops.cast(temperature, "float32")
    )


def _resolve(loss):
    """Maps a user's `loss=` entry to `fn(teacher, student, temperature)`."""
    if loss is None:
        return None
    fn = keras.losses.get(loss) if isinstance(loss, str) else loss
    if fn is None or not callable(fn):
        raise ValueError(
            f"`loss` must be a loss name, a keras Loss or a function, but "
            f"received {loss!r}. Pass e.g. loss='kl_divergence'."
        )
    # Loss classes wrap a function in `.fn` (e.g. KLDivergence().fn).
    core = getattr(fn, "fn", fn)
    if core is keras.losses.kl_divergence:
        return kl_divergence
    if core is keras.losses.categorical_crossentropy:
        return soft_cross_entropy

    def on_scaled_logits(teacher_logits, student_logits, temperature):
        temperature = ops.cast(temperature, "float32")
        teacher = ops.cast(teacher_logits, "float32") / temperature
        student = ops.cast(student_logits, "float32") / temperature
        # Loss.call skips Loss.__call__'s division by the replica count.
        call = fn.call if isinstance(fn, keras.losses.Loss) else fn
        return ops.mean(call(teacher, student))

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
    - a list of the above (or `None` to skip an output) for models with
      several outputs; the terms are summed.

    If a model's last layer applies softmax, the Distiller hands this loss the
    model's log-probabilities, which give the same softened distributions.

    Args:
        temperature: softening temperature `T > 0`. Scheduled by
            `keras_kd.callbacks.DistillationScheduler`.
        loss: see above. Defaults to `"kl_divergence"`.
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

    def __init__(self, temperature=3.0, loss="kl_divergence", name=None):
        self.temperature = check_number(
            temperature, "temperature", minimum=0.0, strict=True
        )
        self.loss = loss
        self._loss_fns = map_losses(_resolve, loss)
        if all(fn is None for fn in _as_list(self._loss_fns)):
            raise ValueError(
                f"`loss` must contain at least one loss, but received "
                f"{loss!r}. Pass e.g. loss='kl_divergence'."
            )
        if name:
            self.name = name

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
                    f"{t_shape[-1]} units."
                )

    def compute_loss(self, teacher_outputs, student_outputs, **kwargs):
        """Returns the summed distillation loss over the outputs.

        Args:
            teacher_outputs: teacher logits, or a structure of them.
            student_outputs: student logits, same structure.
            **kwargs: ignored.

        Returns:
            A scalar float32 tensor.
        """
        if not isinstance(self._loss_fns, list):
            return self._loss_fns(
                teacher_outputs, student_outputs, self.temperature
            )
        values = [
            fn(t, s, self.temperature)
            for fn, t, s in zip(self._loss_fns, teacher_outputs, student_outputs)
            if fn is not None
        ]
        return ops.sum(ops.stack(values))

    def get_config(self):
        config = super().get_config()
        config.update(
            temperature=as_float(self.temperature),
            loss=map_losses(serialize_loss, self.loss),
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["loss"] = map_losses(deserialize_loss, config["loss"])
        return cls(**config)


def _as_list(loss):
    return list(loss) if isinstance(loss, (list, tuple)) else [loss]


def _output_shapes(model):
    """The shapes of a Functional/Sequential model's outputs, else `None`."""
    try:
        outputs = model.outputs
    except (AttributeError, ValueError):
        return None
    if not outputs:
        return None
    return [tuple(o.shape) for o in outputs]
