"""Distillation losses: one module per family."""

from keras_kd.losses.base import DistillationLoss
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
    JensenShannon,
    LogitMSE,
    LogitsDistillation,
    ReverseKL,
)

__all__ = [
    "DIST",
    "DKD",
    "JensenShannon",
    "LogitMSE",
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
