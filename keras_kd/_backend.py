"""Refuses, on import, a Keras backend other than TensorFlow, in one line.

keras_kd's training step is TensorFlow's (`tf.GradientTape`, `tf.distribute`).
Under `KERAS_BACKEND=jax` or `torch` it would fail later, inside a step; this
check runs before Keras is imported, since importing Keras under a backend
that is not installed fails before any later check could.
"""

import json
import os
import sys


def keras_backend():
    """The backend Keras uses or will use, and where that choice comes from.

    Read the way Keras 3.12-3.15 reads it (`keras/src/backend/config.py`):
    `KERAS_BACKEND`, else `"backend"` in `$KERAS_HOME/keras.json` (else
    `~/.keras/keras.json`, or `/tmp/.keras/keras.json` when the home folder is
    not writable), else TensorFlow. An already imported Keras answers itself.

    Returns:
        `(backend, source)`, e.g. `("jax", "KERAS_BACKEND=jax")`.
    """
    if "keras" in sys.modules:
        return sys.modules["keras"].backend.backend(), "the Keras already imported"
    if "KERAS_BACKEND" in os.environ:
        return os.environ["KERAS_BACKEND"], f"KERAS_BACKEND={os.environ['KERAS_BACKEND']}"
    if "KERAS_HOME" in os.environ:
        home = os.environ["KERAS_HOME"]
    else:
        base = os.path.expanduser("~")
        home = os.path.join(base if os.access(base, os.W_OK) else "/tmp", ".keras")
    config = os.path.expanduser(os.path.join(home, "keras.json"))
    try:
        with open(config) as file:
            return json.load(file).get("backend", "tensorflow"), config
    except (OSError, ValueError):  # no file, or one Keras itself ignores
        return "tensorflow", "the default"


_backend, _source = keras_backend()
if _backend != "tensorflow":
    raise ImportError(
        f"keras_kd runs on the TensorFlow backend, but Keras is set to {_backend!r} (from {_source}): "
        f'set KERAS_BACKEND=tensorflow before importing Keras (or "backend": "tensorflow" in keras.json).'
    )


__all__ = [
    "keras_backend",
]
