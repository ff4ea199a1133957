"""What the demo's table says of each model beyond accuracy: latency on this
CPU, and computed verdicts between rows."""

import statistics
import time

import numpy as np

from keras_kd import export

LATENCY_CALLS = 200
WARMUP_CALLS = 20
LATENCY_METHOD = (
    f"latency: median of {LATENCY_CALLS} calls on one sample (batch 1) after {WARMUP_CALLS} "
    f"warm-up calls, this CPU; Keras models through predict_on_batch, .tflite files through "
    f"the LiteRT interpreter (ai-edge-litert)"
)


def median_seconds(call, calls=LATENCY_CALLS, warmup=WARMUP_CALLS):
    """Median wall time of `call()` over `calls` calls after `warmup` calls.

    Args:
        call: a function of no arguments.
        calls: timed calls (at least 1).
        warmup: untimed calls first (tracing, caches, thread pools).

    Returns:
        The median in seconds (the median, not the mean: a busy machine's
        outliers do not move it).
    """
    for _ in range(warmup):
        call()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def keras_latency(model, sample, **kwargs):
    """Seconds per sample of a Keras model at batch 1 (`predict_on_batch`).

    Args:
        model: a `keras.Model`.
        sample: one input with its batch axis, e.g. `x_test[:1]`.
        **kwargs: `median_seconds`'s `calls` and `warmup`.
    """
    return median_seconds(lambda: model.predict_on_batch(sample), **kwargs)


def litert_latency(path, sample, **kwargs):
    """Seconds per sample of a `.tflite` file in the LiteRT interpreter, batch 1.

    The call includes the (de)quantization of an int8 file's input and
    output, as a deployed caller would do it.

    Args:
        path: a file written by `keras_kd.export_student`.
        sample: one input with its batch axis.
        **kwargs: `median_seconds`'s `calls` and `warmup`.
    """
    predict = export.load_predictor(path)
    return median_seconds(lambda: predict(sample), **kwargs)


VERDICTS = ("BEATS", "TIES", "LOSES")


def verdict(accuracy, reference, spread):
    """BEATS, TIES or LOSES, and the difference in points.

    Args:
        accuracy: the row's accuracy, a fraction.
        reference: the compared row's accuracy, a fraction.
        spread: the tie band in points: differences of at most this many
            points either way are TIES (the demo uses the benchmark's
            standard deviation over seeds).

    Returns:
        `(word, points)` with `points = 100 * (accuracy - reference)`.
    """
    points = 100.0 * (float(accuracy) - float(reference))
    band = spread + 1e-9  # 0.954 - 0.950 is 0.40000000000000036 points in floats
    if points > band:
        return "BEATS", points
    if points < -band:
        return "LOSES", points
    return "TIES", points


def verdict_line(name, accuracy, reference_name, reference, spread):
    """One line, e.g. ``"keras_kd BEATS keras.distillation: +1.2 points (ties within ±0.4)"``."""
    word, points = verdict(accuracy, reference, spread)
    return f"{name} {word} {reference_name}: {points:+.1f} points (ties within ±{spread:.1f})"


def as_sample(x):
    """The first sample of `x` with its batch axis, as float32."""
    return np.asarray(x[:1], np.float32)
