"""Curriculum temperature (CTKD): a temperature learned against the student."""

import math

import keras
from keras import ops

from keras_kd import lm
from keras_kd._validation import check_number
from keras_kd.losses.base import DistillationLoss, masked_mean, sum_over_outputs
from keras_kd.losses.divergences import kl_divergence
from keras_kd.losses.logits import LogitsDistillation, softened


def reverse_gradient(value, strength):
    """`value` in the forward pass; its gradient times `-strength` backward.

    `value + (-strength - 1) * (value - stop_gradient(value))`: the second
    term is exactly 0, so the forward value is `value` bit for bit, and its
    derivative is `1 + (-strength - 1) = -strength`.

    Args:
        value: a tensor.
        strength: the reversal strength `λ >= 0` (a scalar, may be a
            variable; no gradient flows into it).

    Returns:
        A tensor equal to `value`.

    Reference:
        Ganin & Lempitsky, "Unsupervised Domain Adaptation by
        Backpropagation", ICML 2015, arXiv:1409.7495.
    """
    strength = ops.stop_gradient(ops.cast(strength, value.dtype))
    return value + (-strength - 1.0) * (value - ops.stop_gradient(value))


class _LearnedTemperature(keras.layers.Layer):
    """Holds CTKD's temperature logit (trained) and reversal strength (set).

    A Layer so that the Distiller tracks it like a connector: its trainable
    weight is in `distiller.trainable_variables`, updated by the Distiller's
    optimizer, and saved with the Distiller (never with the student).
    """

    def __init__(self, initial_logit, name="ctkd_temperature", **kwargs):
        super().__init__(name=name, dtype="float32", **kwargs)
        self.logit = self.add_weight(
            shape=(), initializer=keras.initializers.Constant(initial_logit),
            trainable=True, name="temperature_logit",
        )
        self.reversal = self.add_weight(
            shape=(), initializer="zeros", trainable=False, name="reversal"
        )
        self.built = True


@keras.saving.register_keras_serializable(package="keras_kd")
class CTKD(DistillationLoss):
    """Curriculum temperature KD: `T² · KL(softmax(t/T) ‖ softmax(s/T))` with
    a learned, adversarial `T`.

    `T = min_temperature + temperature_range · sigmoid(θ)`, one learnable
    scalar `θ` (the paper's global temperature). The student minimizes the
    loss; `θ` receives the loss's gradient through a gradient-reversal
    layer, times `-λ`, so the optimizer moves `T` to make the task harder
    (`T` gets `-λ ∂L/∂T`, so a descent step increases the loss). `λ`
    follows the paper's curriculum: a cosine from 0 up to `max_reversal`
    over the first `ramp_epochs` epochs, `λ_e = max_reversal · (1 -
    cos(π · min(e, ramp_epochs) / ramp_epochs)) / 2` at epoch `e` counted
    from 1 as in the authors' code (Keras's epoch 0 is `e = 1`), then
    constant.

    Inside a `Distiller`, `θ` is trained by the Distiller's optimizer with
    the student (and saved with the Distiller, not the student); `fit` sets
    `λ` at the start of each epoch (outside `fit`, call `set_epoch`); the
    temperature is logged as `<name>_temperature` (its mean over the
    epoch's steps). Masked for token-level outputs like the other logit
    losses. Build it inside `strategy.scope()` under `tf.distribute`, as it
    owns a variable.

    Args:
        min_temperature: the lowest temperature (the authors' `t_start`, 1).
        temperature_range: `T` lies in `(min_temperature, min_temperature +
            temperature_range)` (the authors' `t_end`, 20).
        initial_temperature: the starting `T`, strictly inside that range;
            `None` for the authors' start `θ = 1` (`T ≈ 15.62` at the
            defaults).
        max_reversal: `λ_max >= 0`, the final reversal strength (1).
        ramp_epochs: epochs of the cosine ramp of `λ`, `>= 1` (10).
        name: the name this term is logged under.

    Raises:
        ValueError: if a number is out of range; at the step, for a top-K
            teacher cache.

    Example:

    ```python
    distiller = keras_kd.Distiller(teacher, student, keras_kd.losses.CTKD())
    distiller.compile("adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    distiller.fit(x, y, epochs=20)  # logs ctkd_temperature
    ```

    Reference:
        Li, Li, Yang, Zhao, Song, Luo, Li & Yang, "Curriculum Temperature for
        Knowledge Distillation", AAAI 2023, arXiv:2211.16231.
    """

    expects_logits = True
    logged = ("temperature",)
    validate_model_compatibility = LogitsDistillation.validate_model_compatibility

    def __init__(
        self,
        min_temperature=1.0,
        temperature_range=20.0,
        initial_temperature=None,
        max_reversal=1.0,
        ramp_epochs=10,
        name=None,
    ):
        self.min_temperature = check_number(
            min_temperature, "min_temperature", minimum=0.0, strict=True
        )
        self.temperature_range = check_number(
            temperature_range, "temperature_range", minimum=0.0, strict=True
        )
        if initial_temperature is None:
            initial_logit = 1.0  # the authors' nn.Parameter(torch.ones(1))
        else:
            low, high = self.min_temperature, self.min_temperature + self.temperature_range
            initial_temperature = check_number(initial_temperature, "initial_temperature")
            if not low < initial_temperature < high:
                raise ValueError(
                    f"`initial_temperature` must lie strictly between "
                    f"min_temperature={low} and min_temperature + "
                    f"temperature_range={high}, but received "
                    f"{initial_temperature}. Pass a value inside, or widen "
                    f"the range."
                )
            fraction = (initial_temperature - low) / self.temperature_range
            initial_logit = math.log(fraction / (1.0 - fraction))
        self.initial_temperature = initial_temperature
        self.max_reversal = check_number(max_reversal, "max_reversal", minimum=0.0)
        self.ramp_epochs = int(check_number(ramp_epochs, "ramp_epochs", minimum=1))
        if ramp_epochs != self.ramp_epochs:
            raise ValueError(
                f"`ramp_epochs` must be a whole number of epochs, but received "
                f"{ramp_epochs!r}. Pass e.g. ramp_epochs=10."
            )
        if name:
            self.name = name
        self.layer = _LearnedTemperature(initial_logit, name=f"{self.name}_temperature")

    @property
    def temperature(self):
        """The current temperature `T` (a scalar tensor; gradients reach `θ`
        reversed by `λ`)."""
        logit = reverse_gradient(self.layer.logit, self.layer.reversal)
        return self.min_temperature + self.temperature_range * ops.sigmoid(logit)

    @property
    def reversal(self):
        """The current reversal strength `λ` (a non-trainable variable)."""
        return self.layer.reversal

    def reversal_at(self, epoch):
        """`λ` for a Keras epoch index (0 is the first epoch).

        Args:
            epoch: the epoch index, as `on_epoch_begin` receives it.

        Returns:
            A Python float in `[0, max_reversal]`.
        """
        progress = min(epoch + 1, self.ramp_epochs) / self.ramp_epochs
        return self.max_reversal * 0.5 * (1.0 - math.cos(math.pi * progress))

    def set_epoch(self, epoch):
        """Sets `λ` for the epoch that begins (called by `Distiller.fit`)."""
        self.layer.reversal.assign(self.reversal_at(epoch))

    def compute_loss(self, teacher_outputs, student_outputs, mask=None, **kwargs):
        """Returns the KD loss at the learned temperature.

        Args:
            teacher_outputs: teacher logits (or a list/dict of them).
            student_outputs: student logits, same structure.
            mask: real positions of token-level outputs, or `None`.
            **kwargs: ignored.

        Returns:
            A scalar float32 tensor.

        Raises:
            ValueError: for a top-K teacher cache.
        """
        if isinstance(teacher_outputs, lm.TopK):
            raise ValueError(
                "CTKD learns a temperature, but the teacher outputs come from "
                "a top-K cache, which holds log-probabilities at temperature "
                "1 only. Cache full logits (top_k=None)."
            )
        temperature = self.temperature

        def per_output(_, teacher, student):
            forward_kl = lambda log_p, log_q, labels: kl_divergence(log_p, log_q)
            return masked_mean(softened(forward_kl, teacher, student, temperature), mask)

        return sum_over_outputs(per_output, self, teacher_outputs, student_outputs)

    def get_config(self):
        return {
            **super().get_config(),
            "min_temperature": self.min_temperature,
            "temperature_range": self.temperature_range,
            "initial_temperature": self.initial_temperature,
            "max_reversal": self.max_reversal,
            "ramp_epochs": self.ramp_epochs,
        }


__all__ = ["CTKD", "reverse_gradient"]
