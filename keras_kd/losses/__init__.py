"""Distillation losses: one module per family, and the one table of their names.

`LOSSES` maps every name keras_kd gives a loss to its class: one name per
public loss class. `get` reads it, and so do `LogitsDistillation(loss=...)`,
`FeatureDistillation(loss=...)` and the command line, so a name means the
same thing everywhere. A name names a loss, not a temperature: `get(name)`
is the class with its default arguments, and `LogitsDistillation(
temperature=T, loss=name)` applies the same divergence at its own `T`, as
`Class(temperature=T)` does.
"""

import warnings

import keras

from keras_kd.losses import divergences
from keras_kd.losses.base import DistillationLoss
from keras_kd.losses.curriculum import CTKD
from keras_kd.losses.features import (
    PKT,
    AttentionTransfer,
    CosineDistance,
    FeatureDistillation,
    FeatureLoss,
    Hint,
    RKDAngle,
    RKDDistance,
    SimilarityPreserving,
)
from keras_kd.losses.logits import (
    DIST,
    DKD,
    MLKD,
    GeneralizedJSD,
    JensenShannon,
    LogitMSE,
    LogitsDistillation,
    LogitStandardization,
    ReverseKL,
)

LOSSES = {
    # logit losses
    "logits_distillation": LogitsDistillation,
    "reverse_kl": ReverseKL,
    "jensen_shannon": JensenShannon,
    "generalized_jsd": GeneralizedJSD,
    "logits_mse": LogitMSE,
    "logit_standardization": LogitStandardization,
    "dkd": DKD,
    "dist": DIST,
    "mlkd": MLKD,
    "ctkd": CTKD,
    # feature losses (and the term that applies them)
    "feature_distillation": FeatureDistillation,
    "hint": Hint,
    "cosine": CosineDistance,
    "attention": AttentionTransfer,
    "similarity": SimilarityPreserving,
    "rkd_distance": RKDDistance,
    "rkd_angle": RKDAngle,
    "pkt": PKT,
}
"""keras_kd's loss names -> classes: the one table (see the module)."""

_DEPRECATED_NAMES = {"js": "jensen_shannon"}
"""Old second names, still accepted with a DeprecationWarning."""

FEATURE_LOSSES = {name: cls for name, cls in LOSSES.items() if issubclass(cls, FeatureLoss)}
"""The part of `LOSSES` that `FeatureDistillation(loss=...)` applies."""

LOGIT_LOSSES = {
    name: cls for name, cls in LOSSES.items()
    if not issubclass(cls, (FeatureLoss, FeatureDistillation))
}
"""The part of `LOSSES` that compares logits."""


def lookup(name):
    """The class `LOSSES` gives a name, or `None` for a name not in it.

    Args:
        name: a string; a deprecated second name (`"js"`) is accepted with a
            `DeprecationWarning`.

    Returns:
        A class of `LOSSES`, or `None`.
    """
    if name in _DEPRECATED_NAMES:
        warnings.warn(
            f"The loss name {name!r} is deprecated; use {_DEPRECATED_NAMES[name]!r}, "
            f"the same loss.", DeprecationWarning, stacklevel=3)
        name = _DEPRECATED_NAMES[name]
    return LOSSES.get(name)


def name_of(cls):
    """The name `LOSSES` gives a class.

    Args:
        cls: a class of `LOSSES`.

    Returns:
        Its one registered name.

    Raises:
        KeyError: for a class not in the table.
    """
    for name, registered in LOSSES.items():
        if registered is cls:
            return name
    raise KeyError(f"{cls.__name__} has no name in keras_kd.losses.LOSSES.")


def refusal(name, cls, holder, names_here):
    """The message for a name of `LOSSES` that `holder(loss=name)` cannot apply.

    Args:
        name: the name received.
        cls: the class it names.
        holder: `"LogitsDistillation"` or `"FeatureDistillation"`.
        names_here: the names `holder` does apply.

    Returns:
        A message saying what the name is, and how to use it instead.
    """
    if issubclass(cls, FeatureLoss):
        how = (f"it is a feature loss. Use keras_kd.FeatureDistillation(loss={name!r}, "
               f"teacher_layer_name=..., student_layer_name=...)")
    else:
        how = (f"it is a distillation loss with settings of its own. Pass it to the "
               f"Distiller as a term of its own: distillation_losses=[keras_kd.losses."
               f"{cls.__name__}(...)]")
    return (f"`loss={name!r}` names keras_kd.losses.{cls.__name__}, which {holder} cannot "
            f"apply: {how}. {holder}'s `loss` takes one of {names_here} or a keras.losses name.")


def get(identifier):
    """Resolves a loss name, like `keras.losses.get`, for Python and the CLI.

    Args:
        identifier: a name of `LOSSES` (logit losses: `"logits_distillation"`,
            `"reverse_kl"`, `"jensen_shannon"`, `"generalized_jsd"`,
            `"logits_mse"`, `"logit_standardization"`, `"dkd"`, `"dist"`,
            `"mlkd"`, `"ctkd"`; feature losses: `"feature_distillation"`,
            `"hint"`, `"cosine"`, `"attention"`, `"similarity"`,
            `"rkd_distance"`, `"rkd_angle"`, `"pkt"`), any `keras.losses`
            name, or a loss object (returned as it is).

    Returns:
        An instance of the named class with its default arguments, or what
        `keras.losses.get` returns for a Keras name.

    Raises:
        ValueError: for an unknown name, listing keras_kd's names and saying
            that any `keras.losses` name works too.

    Example:

    ```python
    keras_kd.losses.get("attention")   # AttentionTransfer()
    keras_kd.losses.get("reverse_kl")  # ReverseKL(), at its default temperature 1
    keras_kd.losses.get("mse")         # keras.losses.mean_squared_error
    ```
    """
    if not isinstance(identifier, str):
        return identifier
    cls = lookup(identifier)
    if cls is not None:
        return cls()
    try:
        return keras.losses.get(identifier)
    except ValueError:
        raise ValueError(
            f"Unknown loss name {identifier!r}. keras_kd's names: feature losses "
            f"{sorted(set(LOSSES) - set(LOGIT_LOSSES))}, logit losses {sorted(LOGIT_LOSSES)}; "
            f"any keras.losses name works too (e.g. 'mse', 'kl_divergence')."
        ) from None


__all__ = [
    "CTKD",
    "DIST",
    "DKD",
    "FEATURE_LOSSES",
    "LOGIT_LOSSES",
    "LOSSES",
    "MLKD",
    "PKT",
    "AttentionTransfer",
    "CosineDistance",
    "DistillationLoss",
    "FeatureDistillation",
    "FeatureLoss",
    "GeneralizedJSD",
    "Hint",
    "JensenShannon",
    "LogitMSE",
    "LogitStandardization",
    "LogitsDistillation",
    "RKDAngle",
    "RKDDistance",
    "ReverseKL",
    "SimilarityPreserving",
    "divergences",
    "get",
    "lookup",
    "name_of",
    "refusal",
]
