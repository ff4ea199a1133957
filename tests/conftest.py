"""Test set-up: two logical CPU devices, so MirroredStrategy can be tested."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

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
