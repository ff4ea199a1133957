"""Post-hoc temperature scaling, folded into the student's last layer.

A distilled student trained on softened or mixed targets is often
under-confident: its top-1 probabilities are lower than its accuracy.
`calibrate` fits one temperature `T` on validation data by minimizing the
negative log-likelihood of `softmax(z / T)` and divides the kernel and bias
of the final `Dense` layer by `T`, so the saved `.keras` file and the
exported `.tflite` file give calibrated probabilities with no extra layer,
and top-1 predictions are those of the uncalibrated model.
"""

import keras
import numpy as np
import tensorflow as tf

__all__ = ["calibrate", "fit_temperature", "expected_calibration_error"]

# Temperatures are searched in [1 / MAX_INVERSE, 1 / MIN_INVERSE]: a
# minimum outside that range means the validation data cannot pin one down.
MIN_INVERSE = 1e-2
MAX_INVERSE = 1e2
_FOLDABLE_ACTIVATIONS = ("linear", "softmax")


def calibrate(model, validation_data, batch_size=256):
    """Fits a temperature on validation data and folds it into `model`.

    The logits `z` of the final `Dense` layer become `z / T`: its kernel and
    bias are divided by `T` in place. Top-1 predictions do not change; the
    probabilities of `softmax(z / T)` minimize the negative log-likelihood of
    the validation labels.

    Args:
        model: a `keras.Model` whose last layer is a `keras.layers.Dense`
            with a linear (logits) or softmax activation, e.g. a student
            after `Distiller.fit`.
        validation_data: `(x, y)` with class ids `y` of shape `(samples,)`,
            or a `tf.data.Dataset` of `(x, y)` batches. Use data the model
            did not train on.
        batch_size: batch size for computing the logits of `(x, y)` arrays.

    Returns:
        The fitted temperature `T` (a float; > 1 means the model was
        over-confident, < 1 under-confident).

    Raises:
        ValueError: if the last layer cannot hold the temperature (not a
            `Dense`, or another activation), if the labels are not class ids
            of the model's outputs, or if no temperature in
            `[0.01, 100]` minimizes the likelihood (e.g. every validation
            sample is right with a wide margin: any `T -> 0` fits better).

    Example:

    ```python
    temperature = keras_kd.calibrate(distiller.student, (x_val, y_val))
    distiller.student.save("student.keras")  # calibrated probabilities
    ```

    Reference:
        Guo, Pleiss, Sun & Weinberger, "On Calibration of Modern Neural
        Networks", ICML 2017, arXiv:1706.04599.
    """
    head = _foldable_head(model)
    logits, labels = _logits_and_labels(model, head, validation_data, batch_size)
    temperature = fit_temperature(logits, labels)
    head.kernel.assign(head.kernel / temperature)
    if head.use_bias:
        head.bias.assign(head.bias / temperature)
    return temperature


def fit_temperature(logits, labels):
    """The temperature that minimizes the mean negative log-likelihood.

    The loss `mean(logsumexp(b z) - b z_y)` is convex in `b = 1 / T` (its
    second derivative is the variance of `z` under `softmax(b z)`), so the
    minimum is where its derivative `mean(E[z] - z_y)` crosses 0, found by
    bisection of `log b` in float64.

    Args:
        logits: `(samples, classes)` logits (or log-probabilities).
        labels: `(samples,)` class ids.

    Returns:
        `T` as a float.

    Raises:
        ValueError: if the minimum lies outside `T` in `[0.01, 100]`.
    """
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    labels = np.asarray(labels)
    true_logit = z[np.arange(len(z)), labels]

    def slope(inverse):
        scaled = inverse * z
        p = np.exp(scaled - scaled.max(axis=-1, keepdims=True))
        p /= p.sum(axis=-1, keepdims=True)
        return float(np.mean((p * z).sum(axis=-1) - true_logit))

    low, high = np.log(MIN_INVERSE), np.log(MAX_INVERSE)
    if slope(MAX_INVERSE) <= 0:
        raise ValueError(
            f"No temperature >= {1 / MAX_INVERSE} minimizes the validation loss: the "
            f"likelihood keeps rising as T -> 0 (every one of the {len(z)} validation "
            f"samples is predicted right with a wide margin). Calibrate on more, or "
            f"harder, held-out data."
        )
    if slope(MIN_INVERSE) >= 0:
        raise ValueError(
            f"No temperature <= {1 / MIN_INVERSE} minimizes the validation loss: the "
            f"model's logits carry no information about these {len(z)} labels. Check "
            f"that the labels match the model's classes."
        )
    for _ in range(200):  # 2^-200 of the log-range: float64 exact
        middle = (low + high) / 2
        if slope(np.exp(middle)) < 0:
            low = middle
        else:
            high = middle
    return float(1.0 / np.exp((low + high) / 2))


def expected_calibration_error(probabilities, labels, bins=15):
    """ECE of top-1 predictions in equal-width confidence bins (NumPy).

    Args:
        probabilities: `(samples, classes)` probabilities.
        labels: `(samples,)` class ids.
        bins: number of bins `((m-1)/M, m/M]`.

    Returns:
        `sum_m (n_m / n) |accuracy_m - confidence_m|`, a float in [0, 1].

    Reference:
        Guo et al., ICML 2017 (as `keras_kd.metrics.CalibrationError`).
    """
    p = np.asarray(probabilities, np.float64)
    confidence = p.max(axis=-1)
    correct = (p.argmax(axis=-1) == np.asarray(labels)).astype(np.float64)
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    gap = 0.0
    for m in range(bins):
        in_bin = index == m
        gap += abs(correct[in_bin].sum() - confidence[in_bin].sum())
    return float(gap / len(p))


def _foldable_head(model):
    """The final Dense layer that can hold the temperature, or a ValueError."""
    if not isinstance(model, keras.Model) or not model.layers:
        raise ValueError(
            f"`calibrate` takes a keras.Model, but received {type(model).__name__}. "
            f"Pass the student (e.g. `distiller.student`)."
        )
    head = model.layers[-1]
    activation = getattr(getattr(head, "activation", None), "__name__", None)
    if type(head) is not keras.layers.Dense or activation not in _FOLDABLE_ACTIVATIONS:
        kind = type(head).__name__ + (f" with activation {activation!r}" if activation else "")
        raise ValueError(
            f"`calibrate` folds the temperature into the model's last layer, which must be "
            f"a Dense layer with a linear or softmax activation, but '{model.name}' ends in "
            f"'{head.name}' ({kind}): dividing its weights by T would not divide the logits "
            f"by T. End the model in a Dense layer that outputs the logits."
        )
    return head


def _logits_and_labels(model, head, validation_data, batch_size):
    if isinstance(validation_data, tf.data.Dataset):
        parts = [(model.predict_on_batch(x), np.asarray(y)) for x, y in validation_data]
        outputs = np.concatenate([o for o, _ in parts])
        labels = np.concatenate([y for _, y in parts])
    elif isinstance(validation_data, (tuple, list)) and len(validation_data) == 2:
        x, labels = validation_data
        outputs = model.predict(x, batch_size=batch_size, verbose=0)
        labels = np.asarray(labels)
    else:
        raise ValueError(
            f"`validation_data` must be `(x, y)` or a tf.data.Dataset of (x, y) batches, "
            f"but received {type(validation_data).__name__}."
        )
    outputs = np.asarray(outputs, np.float64)
    if outputs.ndim != 2:
        raise ValueError(
            f"`calibrate` fits one temperature to (samples, classes) outputs, but "
            f"'{model.name}' outputs shape {outputs.shape[1:]} per sample."
        )
    classes = outputs.shape[-1]
    if (labels.shape != (len(outputs),) or not np.issubdtype(labels.dtype, np.integer)
            or labels.min() < 0 or labels.max() >= classes):
        raise ValueError(
            f"`calibrate` needs one class id in [0, {classes}) per sample, but received "
            f"labels of shape {labels.shape} and dtype {labels.dtype}"
            + (f" (from {labels.min()} to {labels.max()})" if labels.size else "")
            + ". Pass class ids (for one-hot labels, `y.argmax(-1)`)."
        )
    if head.activation.__name__ == "softmax":
        # log p = z - logsumexp(z): the same softmax(b * .) as the logits.
        outputs = np.log(np.maximum(outputs, np.finfo(np.float32).tiny))
    return outputs, labels
