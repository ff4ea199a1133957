"""Shared pieces of the benchmarks: models, data, interleaved timing."""

import os
import platform
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def conv_net(widths, name, classes=10, length=40, regularized=False):
    """A 1-D CNN: one conv block per width (the last one named 'feature').

    `regularized` adds BatchNormalization and Dropout after each block but
    the last, as most real networks have (they also keep TensorFlow from
    merging two identical forward passes into one).
    """
    inputs = keras.Input((length, 1))
    x = inputs
    for i, width in enumerate(widths):
        last = i == len(widths) - 1
        x = keras.layers.Conv1D(width, 5, padding="same", activation="relu",
                                name="feature" if last else f"conv{i}")(x)
        if regularized and not last:
            x = keras.layers.Dropout(0.1)(keras.layers.BatchNormalization()(x))
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, keras.layers.Dense(classes)(x), name=name)


def batches(count, batch_size=128, length=40, classes=10, seed=0):
    """`count` fixed random batches as a tf.data.Dataset."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(count * batch_size, length, 1)).astype("float32")
    y = rng.integers(0, classes, count * batch_size)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size).cache()


def interleaved(candidates, repeats=7, alternate=False):
    """Runs each candidate once per round, round after round.

    Args:
        candidates: `{name: zero-argument function returning seconds}` (or
            any measurement).
        repeats: rounds.
        alternate: run the candidates in reverse order every other round, so
            that none always runs first (e.g. on a machine still busy with
            the previous candidate's exit).

    Returns:
        `{name: [seconds per round]}`.
    """
    times = {name: [] for name in candidates}
    order = list(candidates)
    for index in range(repeats):
        for name in (order[::-1] if alternate and index % 2 else order):
            times[name].append(candidates[name]())
    return times


def timed(function):
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def median_ratio(numerator, denominator):
    """Median over rounds of the per-round ratio (robust to drifting load)."""
    return statistics.median(a / b for a, b in zip(numerator, denominator))


def machine():
    return (f"{platform.machine()}, {os.cpu_count()} CPU cores, Python "
            f"{platform.python_version()}, TensorFlow {tf.__version__}, Keras {keras.__version__}")


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
