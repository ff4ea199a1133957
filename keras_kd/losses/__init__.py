"""Distillation losses: one module per family, and one registry of names."""

import keras

from keras_kd.losses.base import DistillationLoss
from keras_kd.losses.curriculum import CTKD
from keras_kd.losses.features import (
    FEATURE_LOSSES,
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
    LOGIT_LOSSES,
    MLKD,
    GeneralizedJSD,
    JensenShannon,
    LogitMSE,
    LogitsDistillation,
    LogitStandardization,
    ReverseKL,
)

_LOGIT_LOSS_CLASSES = {
    "reverse_kl": ReverseKL,
    "jensen_shannon": JensenShannon,
    "js": JensenShannon,
    "logits_mse": LogitMSE,
    "logit_standardization": LogitStandardization,
    "mlkd": MLKD,
    "ctkd": CTKD,
}


def get(identifier):
    """Resolves a loss name, like `keras.losses.get`, for Python and the CLI.

    Args:
        identifier: one of keras_kd's names (feature losses: `"hint"`,
            `"cosine"`, `"attention"`, `"similarity"`, `"rkd_distance"`,
            `"rkd_angle"`, `"pkt"`; logit losses: `"reverse_kl"`,
            `"jensen_shannon"`, `"js"`, `"logits_mse"`,
            `"logit_standardization"`, `"mlkd"`, `"ctkd"`), any
            `keras.losses` name, or a loss object (returned as it is).

    Returns:
        A keras_kd feature loss or logit loss instance, or what
        `keras.losses.get` returns for a Keras name.

    Raises:
        ValueError: for an unknown name, listing keras_kd's names and saying
            that any `keras.losses` name works too.

    Example:

    ```python
    keras_kd.losses.get("attention")   # AttentionTransfer()
    keras_kd.losses.get("reverse_kl")  # ReverseKL()
    keras_kd.losses.get("mse")         # keras.losses.mean_squared_error
    ```
    """
    if not isinstance(identifier, str):
        return identifier
    if identifier in FEATURE_LOSSES:
        return FEATURE_LOSSES[identifier]()
    if identifier in _LOGIT_LOSS_CLASSES:
        return _LOGIT_LOSS_CLASSES[identifier]()
    try:
        return keras.losses.get(identifier)
    except ValueError:
        raise ValueError(
            f"Unknown loss name {identifier!r}. keras_kd's names: feature "
            f"losses {sorted(FEATURE_LOSSES)}, logit losses "
            f"{sorted(_LOGIT_LOSS_CLASSES)}; any keras.losses name works too (e.g. "
            f"'mse', 'kl_divergence')."
        ) from None


__all__ = [
    "FEATURE_LOSSES",
    "GeneralizedJSD",
    "LOGIT_LOSSES",
    "get",
    "CTKD",
    "DIST",
    "DKD",
    "JensenShannon",
    "LogitMSE",
    "LogitStandardization",
    "MLKD",
    "ReverseKL",
    "AttentionTransfer",
    "CosineDistance",
    "DistillationLoss",
    "FeatureDistillation",
    "FeatureLoss",
    "Hint",
    "LogitsDistillation",
    "PKT",
    "RKDAngle",
    "RKDDistance",
    "SimilarityPreserving",
]
