"""Distillation losses: one module per family."""

from keras_kd.losses.base import DistillationLoss
from keras_kd.losses.logits import LogitsDistillation

__all__ = ["DistillationLoss", "LogitsDistillation"]
