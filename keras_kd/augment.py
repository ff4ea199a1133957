"""Consistent augmentation: one augmented view for teacher and student.

An augmentation is applied once per training batch inside the Distiller's
step, before either model runs, so the teacher's soft targets describe exactly
the inputs the student sees ("function matching"). It maps

    (x, targets) -> (x, targets)

where `targets` is a list of `(y, weight)` pairs: the hard-label loss is the
sum of `loss(y, student(x), sample_weight * weight)` over the pairs, and the
compiled metrics are updated with each pair. Unlabelled data has `targets=[]`.
`weight=None` means 1. Mixing augmentations such as `Mixup` return two pairs
(each sample's two labels, weighted by the mixing coefficient); input-only
augmentations leave `targets` unchanged.

Any Keras preprocessing layer or callable of `x` can be passed to the
Distiller's `augmentation=` too: it is wrapped in `InputAugmentation`.
A list is applied in order.
"""

import abc
import inspect

import keras
from keras import ops

from keras_kd import _validation
from keras_kd._validation import check_number


class Augmentation(abc.ABC):
    """Base class: `__call__(x, targets)` returns `(x, targets)`."""

    supports_jit = True

    @abc.abstractmethod
    def __call__(self, x, targets):
        """Returns the augmented inputs and the matching `(y, weight)` list."""


class _PairMixing(Augmentation):
    """Mixes each sample with a random partner of the (per-replica) batch,
    by a coefficient `lam ~ Beta(alpha, alpha)` per sample."""

    def __init__(self, alpha=1.0, seed=None):
        self.alpha = check_number(alpha, "alpha", minimum=0.0, strict=True)
        self.seed = seed
        self._seed_generator = keras.random.SeedGenerator(seed)

    @property
    def supports_jit(self):
        return self.alpha == 1.0  # only Beta(1, 1) avoids gamma sampling

    def _draw(self, x):
        """(batch size, lam per sample, partner index per sample)."""
        batch = ops.shape(keras.tree.flatten(x)[0])[0]
        if self.alpha == 1.0:  # Beta(1, 1) is uniform, and XLA can draw it
            lam = keras.random.uniform((batch,), seed=self._seed_generator)
        else:
            lam = keras.random.beta((batch,), self.alpha, self.alpha, seed=self._seed_generator)
        partner = keras.random.shuffle(ops.arange(batch), seed=self._seed_generator)
        return batch, lam, partner

    def get_config(self):
        return {"alpha": self.alpha, "seed": self.seed}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@keras.saving.register_keras_serializable(package="keras_kd")
class Mixup(_PairMixing):
    """Mixes each sample with another of the batch, for teacher and student.

    `x_i <- lam_i * x_i + (1 - lam_i) * x_j` with `lam_i ~ Beta(alpha, alpha)`
    and `j` a random permutation of the (per-replica) batch. Each sample's
    hard-label loss becomes `lam_i * loss(y_i) + (1 - lam_i) * loss(y_j)`.

    Args:
        alpha: the Beta distribution's parameter (> 0); 1.0 draws `lam`
            uniformly, smaller values mix less. Under `jit_compile=True`
            only 1.0 works: TensorFlow has no XLA kernel for the gamma
            sampling that other values need.
        seed: an int for reproducible draws, or `None`.

    Raises:
        ValueError: if `alpha` is not a positive number.

    Example:

    ```python
    distiller = keras_kd.Distiller(
        teacher, student, keras_kd.LogitsDistillation(temperature=1.0),
        student_loss_weight=0.0, augmentation=keras_kd.augment.Mixup(1.0))
    ```

    Reference:
        Zhang, Cisse, Dauphin & Lopez-Paz, "mixup: Beyond Empirical Risk
        Minimization", ICLR 2018, arXiv:1710.09412. As consistent
        augmentation for distillation: Beyer et al., "Knowledge distillation:
        A good teacher is patient and consistent", CVPR 2022,
        arXiv:2106.05237.
    """

    def __call__(self, x, targets):
        _, lam, partner = self._draw(x)

        def mix(tensor):
            weight = ops.reshape(lam, (-1,) + (1,) * (len(tensor.shape) - 1))
            weight = ops.cast(weight, tensor.dtype)
            return weight * tensor + (1 - weight) * ops.take(tensor, partner, 0)

        return keras.tree.map_structure(mix, x), _mix_targets(targets, lam, partner)



@keras.saving.register_keras_serializable(package="keras_kd")
class CutMix(_PairMixing):
    """Pastes a random window (sequences) or box (images) of another sample.

    For inputs of shape `(batch, steps, channels)` a window of
    `(1 - lam) * steps` steps, for `(batch, height, width, channels)` a box of
    area fraction `(1 - lam)`, is copied from a random partner of the
    (per-replica) batch; `lam ~ Beta(alpha, alpha)`. Each sample's hard-label
    loss is weighted by the area it keeps, as in the paper; the teacher's
    soft targets, with `Distiller(augmentation=...)`, describe the spliced
    input exactly, which is where distillation gains most.

    Args:
        alpha: the Beta distribution's parameter (> 0); 1.0 (uniform) is
            the only value that compiles with XLA.
        seed: an int for reproducible draws, or `None`.

    Raises:
        ValueError: if `alpha` is not a positive number.

    Example:

    ```python
    keras_kd.Distiller(teacher, student, keras_kd.LogitsDistillation(1.0),
                       student_loss_weight=0.0,
                       augmentation=keras_kd.augment.CutMix())
    ```

    Reference:
        Yun et al., "CutMix: Regularization Strategy to Train Strong
        Classifiers with Localizable Features", ICCV 2019, arXiv:1905.04899.
    """

    def __call__(self, x, targets):
        batch, lam, partner = self._draw(x)
        first = keras.tree.flatten(x)[0]
        mask = self._mask(first.shape, batch, lam)  # 1 where the partner shows
        kept = 1.0 - ops.mean(ops.reshape(mask, (batch, -1)), axis=1)

        def paste(tensor):
            cut = ops.cast(mask, tensor.dtype)
            return (1 - cut) * tensor + cut * ops.take(tensor, partner, 0)

        return keras.tree.map_structure(paste, x), _mix_targets(targets, kept, partner)

    def _mask(self, shape, batch, lam):
        spatial = [int(size) for size in shape[1:-1]]
        if len(spatial) not in (1, 2):
            raise ValueError(
                f"CutMix takes (batch, steps, channels) or (batch, height, "
                f"width, channels) inputs, but received shape {tuple(shape)}."
            )
        # Window length (1-D) or box side (2-D) fraction: (1 - lam)^(1/d).
        side = ops.power(1.0 - lam, 1.0 / len(spatial))
        mask = None
        for axis, size in enumerate(spatial):
            length = ops.round(side * size)
            start = ops.floor(
                keras.random.uniform((batch,), seed=self._seed_generator) * (size - length + 1)
            )
            position = ops.cast(ops.arange(size), "float32")[None, :]
            inside = (position >= start[:, None]) & (position < (start + length)[:, None])
            inside = ops.reshape(
                ops.cast(inside, "float32"),
                (batch,) + tuple(size if a == axis else 1 for a in range(len(spatial))),
            )
            mask = inside if mask is None else mask * inside
        return mask[..., None]



@keras.saving.register_keras_serializable(package="keras_kd")
class RandomShift(Augmentation):
    """Shifts each sequence by a random number of steps, padding with zeros.

    For inputs of shape `(batch, steps, channels)`, such as MNIST-1D, where
    Keras's image layers do not apply.

    Args:
        max_shift: the largest shift, in steps, either way.
        seed: an int for reproducible draws, or `None`.

    Raises:
        ValueError: if `max_shift` is not a non-negative integer.

    Example:

    ```python
    augmentation = [keras_kd.augment.RandomShift(4), keras_kd.augment.Mixup()]
    ```
    """

    def __init__(self, max_shift, seed=None):
        if not _validation.is_whole_number(max_shift) or max_shift < 0:
            raise ValueError(
                f"`max_shift` must be a non-negative int, but received "
                f"{max_shift!r}. Pass e.g. max_shift=4."
            )
        self.max_shift = int(max_shift)
        self.seed = seed
        self._seed_generator = keras.random.SeedGenerator(seed)

    def __call__(self, x, targets):
        return keras.tree.map_structure(self._shift, x), targets

    def _shift(self, x):
        batch, steps = ops.shape(x)[0], x.shape[1]
        pad = [(0, 0), (self.max_shift, self.max_shift)] + [(0, 0)] * (
            len(x.shape) - 2
        )
        padded = ops.pad(x, pad)
        offsets = keras.random.randint(
            (batch, 1), 0, 2 * self.max_shift + 1, seed=self._seed_generator
        )
        positions = offsets + ops.arange(steps)[None, :]
        positions = ops.reshape(
            positions, (batch, steps) + (1,) * (len(x.shape) - 2)
        )
        return ops.take_along_axis(
            padded, ops.broadcast_to(positions, ops.shape(x)), axis=1
        )

    def get_config(self):
        return {"max_shift": self.max_shift, "seed": self.seed}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _mix_targets(targets, lam, partner):
    """Each `(y, weight)` pair becomes the sample's own label weighted by
    `lam` and its partner's weighted by `1 - lam`."""
    mixed = []
    for y, weight in targets:
        own = lam if weight is None else weight * lam
        other = 1 - lam
        if weight is not None:
            other = ops.take(weight, partner, 0) * other
        mixed.append((y, own))
        mixed.append((keras.tree.map_structure(lambda t: ops.take(t, partner, 0), y), other))
    return mixed


@keras.saving.register_keras_serializable(package="keras_kd")
class InputAugmentation(Augmentation):
    """Applies a Keras layer or a callable to the inputs only.

    Args:
        transform: e.g. `keras.layers.RandomFlip()`; called with
            `training=True` when it accepts that argument.
    """

    def __init__(self, transform):
        self.transform = transform
        call = getattr(transform, "call", transform)
        self._takes_training = "training" in inspect.signature(call).parameters

    @property
    def supports_jit(self):
        return getattr(self.transform, "supports_jit", True)

    def __call__(self, x, targets):
        if self._takes_training:
            return self.transform(x, training=True), targets
        return self.transform(x), targets

    def get_config(self):
        return {"transform": keras.saving.serialize_keras_object(self.transform)}

    @classmethod
    def from_config(cls, config):
        return cls(keras.saving.deserialize_keras_object(config["transform"]))


@keras.saving.register_keras_serializable(package="keras_kd")
class Pipeline(Augmentation):
    """Applies augmentations one after the other (Keras's name for this).

    Args:
        augmentations: a list of `Augmentation`s, Keras layers or callables
            of the inputs.

    Example:

    ```python
    keras_kd.augment.Pipeline([keras_kd.augment.RandomShift(6), keras_kd.augment.CutMix()])
    ```
    """

    def __init__(self, augmentations):
        self.augmentations = [as_augmentation(a) for a in augmentations]

    @property
    def supports_jit(self):
        return all(a.supports_jit for a in self.augmentations)

    def __call__(self, x, targets):
        for augmentation in self.augmentations:
            x, targets = augmentation(x, targets)
        return x, targets

    def get_config(self):
        return {
            "augmentations": [
                keras.saving.serialize_keras_object(a) for a in self.augmentations
            ]
        }

    @classmethod
    def from_config(cls, config):
        return cls(
            [keras.saving.deserialize_keras_object(a) for a in config["augmentations"]]
        )


def as_augmentation(augmentation):
    """Normalises the Distiller's `augmentation=` argument.

    Args:
        augmentation: `None`, an `Augmentation`, a Keras layer or callable of
            the inputs, or a list of these.

    Returns:
        An `Augmentation`, or `None`.

    Raises:
        ValueError: if `augmentation` is none of these.
    """
    if augmentation is None or isinstance(augmentation, Augmentation):
        return augmentation
    if isinstance(augmentation, (list, tuple)):
        return Pipeline(augmentation)
    if callable(augmentation):
        return InputAugmentation(augmentation)
    raise ValueError(
        f"`augmentation` must be a keras_kd.augment.Augmentation, a Keras "
        f"preprocessing layer, a callable of the inputs or a list of these, "
        f"but received {augmentation!r}. Pass e.g. "
        f"augmentation=keras_kd.augment.Mixup(alpha=1.0)."
    )


def compiles_with_xla(augment, augmentation, jit_compile):
    """Whether a Distiller's step with this augmentation may be XLA-compiled.

    Args:
        augment: `as_augmentation(augmentation)` (or `None`).
        augmentation: the argument as the user gave it (for the message).
        jit_compile: what `compile` received: `True` (required), or
            `"auto"`/`None` (XLA where it can be used).

    Returns:
        `False` when the augmentation has no XLA kernel and XLA was only
        requested as `"auto"` (the step then runs without XLA), else `True`.

    Raises:
        ValueError: if `jit_compile=True` was asked for an augmentation
            without an XLA kernel.
    """
    if augment is None or augment.supports_jit:
        return True
    if jit_compile is True:
        raise ValueError(
            f"jit_compile=True, but the augmentation {augmentation!r} cannot be "
            f"compiled with XLA (e.g. Mixup with alpha != 1 needs gamma sampling, "
            f"which has no XLA kernel). Use Mixup(alpha=1.0), or jit_compile=False."
        )
    return False


__all__ = [
    "Augmentation",
    "CutMix",
    "InputAugmentation",
    "Mixup",
    "Pipeline",
    "RandomShift",
    "as_augmentation",
    "compiles_with_xla",
]
