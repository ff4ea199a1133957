"""Test set-up: two logical CPU devices, so MirroredStrategy can be tested."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_kd._keras_compat import keras_version  # noqa: E402

# Must run before TensorFlow initializes its devices, i.e. before any test.
_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    _cpu, [tf.config.LogicalDeviceConfiguration()] * 2
)


@pytest.fixture(scope="session")
def two_replicas():
    """One MirroredStrategy on the two logical CPUs, shared by every test.

    TensorFlow numbers collective ops per strategy: a second strategy on the
    same devices in one process reuses the first one's instance keys and its
    gradient all-reduce fails ("Shape mismatch in the collective instance").
    """
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same seed and the default dtype policy."""
    keras.utils.set_random_seed(0)
    keras.config.set_dtype_policy("float32")
    yield
    keras.config.set_dtype_policy("float32")


if keras_version() < (3, 13):
    # Keras 3.13 made `train_on_batch`/`test_on_batch` reset the metrics first and
    # every `return_dict=True` a dict of Python floats (`pythonify_logs`); Keras 3.12
    # accumulates metrics across *_on_batch calls and returns a custom step's logs as
    # tensors. The tests are written for 3.13+; on 3.12 (`.ci/oldest`) this gives them
    # the same view of the same values. Nothing keras_kd computes is changed.
    def _floats(logs):
        if isinstance(logs, dict):
            return {name: float(np.asarray(value)) for name, value in logs.items()}
        if isinstance(logs, list):
            return [float(np.asarray(value)) for value in logs]
        return float(np.asarray(logs))

    @pytest.fixture(autouse=True)
    def _keras_3_13_logs(monkeypatch):
        evaluate, train_on_batch, test_on_batch = (
            keras.Model.evaluate, keras.Model.train_on_batch, keras.Model.test_on_batch)

        def evaluate_(self, *args, **kwargs):
            return _floats(evaluate(self, *args, **kwargs))

        def on_batch(method):
            def call(self, *args, **kwargs):
                self.reset_metrics()
                return _floats(method(self, *args, **kwargs))
            return call

        monkeypatch.setattr(keras.Model, "evaluate", evaluate_)
        monkeypatch.setattr(keras.Model, "train_on_batch", on_batch(train_on_batch))
        monkeypatch.setattr(keras.Model, "test_on_batch", on_batch(test_on_batch))
