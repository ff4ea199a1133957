"""The version of keras_kd: read by setup.cfg and by `keras-kd --version`
without importing TensorFlow."""

__version__ = "0.1.0"
