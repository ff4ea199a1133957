"""keras_kd: correct, fast knowledge distillation for Keras 3 on TensorFlow."""

# `_backend` is imported first: it refuses a backend other than TensorFlow before
# anything imports Keras (which fails first under a jax or torch not installed).
from keras_kd import _backend, _validation, augment, callbacks, connectors, losses, metrics  # noqa: F401
from keras_kd._version import __version__
from keras_kd.cache import cache_teacher_outputs
from keras_kd.calibration import calibrate
from keras_kd.distiller import Distiller
from keras_kd.export import export_student
from keras_kd.losses import DistillationLoss, FeatureDistillation, LogitsDistillation
from keras_kd.plan import FeaturePlan, plan_features
from keras_kd.quantization import quantization_aware
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
    "calibrate",
    "callbacks",
    "export_student",
    "connectors",
    "losses",
    "plan_features",
    "quantization_aware",
    "metrics",
]


def _app_datasets():
    from keras_kd.app import datasets

    return datasets


# `keras_kd.datasets` moved to the application: the demo data is not part of the library.
__getattr__ = _validation.moved_attributes(__name__, {"datasets": (
    "`keras_kd.datasets` moved to `keras_kd.app.datasets` (the demo's data, which needs "
    "the 'demo' extra); the old name will be removed.", _app_datasets)})
