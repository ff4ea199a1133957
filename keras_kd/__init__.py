"""keras_kd: correct, fast knowledge distillation for Keras 3 on TensorFlow."""

from keras_kd.distiller import Distiller
from keras_kd.losses import DistillationLoss, LogitsDistillation

__version__ = "0.1.0"

__all__ = ["Distiller", "DistillationLoss", "LogitsDistillation"]
