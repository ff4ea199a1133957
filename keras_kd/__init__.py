"""keras_kd: correct, fast knowledge distillation for Keras 3 on TensorFlow."""

from keras_kd import augment, callbacks, connectors, datasets, losses, metrics
from keras_kd._version import __version__
from keras_kd.cache import cache_teacher_outputs
from keras_kd.distiller import Distiller
from keras_kd.export import export_student
from keras_kd.losses import DistillationLoss, FeatureDistillation, LogitsDistillation
from keras_kd.plan import FeaturePlan, plan_features
from keras_kd.taps import FINAL_OUTPUT

__all__ = [
    "__version__",
    "FINAL_OUTPUT",
    "DistillationLoss",
    "Distiller",
    "FeatureDistillation",
    "FeaturePlan",
    "LogitsDistillation",
    "augment",
    "cache_teacher_outputs",
    "callbacks",
    "export_student",
    "connectors",
    "datasets",
    "losses",
    "plan_features",
    "metrics",
]
