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

__all__ = ["BINS", "calibrate", "expected_calibration_error", "fit_temperature", "reliability", "softmax"]

# Temperatures are searched in [1 / MAX_INVERSE, 1 / MIN_INVERSE]: a
# minimum outside that range means the validation data cannot pin one down.
# Wide, because a student distilled on standardized logits has no scale of
# its own (the demo's needs T = 0.021).
MIN_INVERSE = 1e-4
MAX_INVERSE = 1e4
PROBE_SAMPLES = 64  # validation inputs run again after folding, as a check
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
            `[1e-4, 1e4]` minimizes the likelihood (e.g. every validation
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
    logits, labels, probe = _logits_and_labels(model, head, validation_data, batch_size)
    temperature = fit_temperature(logits, labels)
    weights = [head.kernel] + ([head.bias] if head.use_bias else [])
    originals = [w.numpy() for w in weights]
    for weight, value in zip(weights, originals):
        weight.assign(value / temperature)
    _check_folded(model, head, probe, logits, temperature, weights, originals)
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
        ValueError: if the minimum lies outside `T` in `[1e-4, 1e4]`.
    """
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    labels = np.asarray(labels)
    true_logit = z[np.arange(len(z)), labels]

    def slope(inverse):
        p = softmax(inverse * z)
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


def softmax(logits, temperature=1.0):
    """`softmax(logits / temperature)` over the last axis, in float64 NumPy.

    Args:
        logits: `(..., classes)` logits.
        temperature: the softmax temperature.

    Returns:
        A float64 array of probabilities.
    """
    z = np.asarray(logits, np.float64) / temperature
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


BINS = 15
"""Equal-width confidence bins of the ECE and the reliability diagram (Guo et al. use 15)."""


def expected_calibration_error(probabilities, labels, bins=BINS):
    """ECE of top-1 predictions in equal-width confidence bins (NumPy).

    Args:
        probabilities: `(samples, classes)` probabilities.
        labels: `(samples,)` class ids.
        bins: number of bins `((m-1)/M, m/M]`.

    Returns:
        `sum_m (n_m / n) |accuracy_m - confidence_m|`, a float in [0, 1]
        (`reliability(...)["ece"]`).

    Reference:
        Guo et al., ICML 2017 (as `keras_kd.metrics.CalibrationError`).
    """
    return reliability(probabilities, labels, bins)["ece"]


def reliability(probabilities, labels, bins=BINS):
    """Accuracy per confidence bin and the expected calibration error (ECE).

    A sample's confidence is its largest probability; it falls in bin `b`
    when `b / bins < confidence <= (b + 1) / bins`. The ECE is the mean over
    samples of `|accuracy - mean confidence|` of their bin.

    Args:
        probabilities: `(samples, classes)` predicted probabilities.
        labels: `(samples,)` true class ids.
        bins: number of equal-width bins on [0, 1].

    Returns:
        A dict: `edges` (`bins + 1` bin edges), `count` (samples per bin),
        `confidence` and `accuracy` (mean per bin, NaN for an empty bin) and
        `ece` (a float in [0, 1]).

    Example:

    ```python
    curve = keras_kd.calibration.reliability(np.array([[0.9, 0.1], [0.6, 0.4]]), np.array([0, 1]), bins=2)
    curve["ece"]  # both in the bin (0.5, 1]: |accuracy 0.5 - confidence 0.75| = 0.25
    ```

    Reference:
        Guo et al., "On Calibration of Modern Neural Networks", ICML 2017,
        arXiv:1706.04599.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    confidence = probabilities.max(axis=-1)
    correct = (probabilities.argmax(axis=-1) == np.asarray(labels)).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.digitize(confidence, edges[1:-1], right=True)  # edges[b] < confidence <= edges[b + 1]
    count = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):  # empty bins become NaN
        mean_confidence = np.bincount(index, confidence, minlength=bins) / count
        accuracy = np.bincount(index, correct, minlength=bins) / count
    gaps = np.abs(accuracy - mean_confidence)
    ece = float(np.sum(count[count > 0] * gaps[count > 0]) / len(confidence))
    return {
        "edges": edges,
        "count": count,
        "confidence": mean_confidence,
        "accuracy": accuracy,
        "ece": ece,
    }


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
        why = ("it has no weights to hold T" if not head.weights
               else "dividing its weights by T would not divide the logits by T")
        raise ValueError(
            f"`calibrate` folds the temperature into the model's last layer, which must be "
            f"a Dense layer with a linear or softmax activation, but '{model.name}' ends in "
            f"'{head.name}' ({kind}): {why}. End the model in a Dense layer that outputs the "
            f"logits."
        )
    return head


def _logits_and_labels(model, head, validation_data, batch_size):
    if isinstance(validation_data, tf.data.Dataset):
        spec = validation_data.element_spec[0] if isinstance(validation_data.element_spec, tuple) else None
        # A batch of a one-input model has that input's rank (several inputs:
        # their order in a dict is not the model's; Keras checks them itself).
        try:
            inputs = list(model.inputs or [])
        except (AttributeError, ValueError):  # a subclassed model: predict_on_batch checks
            inputs = []
        if (isinstance(spec, tf.TensorSpec) and len(inputs) == 1 and spec.shape.rank is not None
                and spec.shape.rank < len(inputs[0].shape)):
            raise ValueError(
                f"`calibrate` reads `validation_data` as a tf.data.Dataset of (x, y) batches, but "
                f"its elements are {validation_data.element_spec}, with no batch axis. Batch it "
                f"(`dataset.batch(256)`)."
            )
        parts = [(x, model.predict_on_batch(x), np.asarray(y)) for x, y in validation_data]
        if not parts:
            raise ValueError("`calibrate` received an empty validation data set. Pass held-out "
                             "samples with labels.")
        probe = parts[0][0]
        outputs = np.concatenate([o for _, o, _ in parts])
        labels = np.concatenate([y for _, _, y in parts])
    elif isinstance(validation_data, (tuple, list)) and len(validation_data) == 2:
        x, labels = validation_data
        samples = len(keras.tree.flatten(x)[0])
        labels = np.asarray(labels)
        if samples == 0 or len(labels) != samples:
            raise ValueError(
                f"`calibrate` needs one label per validation input, but received {samples} "
                f"inputs and labels of shape {labels.shape}. Pass `(x, y)` of the same, "
                f"non-zero, number of samples."
            )
        outputs = model.predict(x, batch_size=batch_size, verbose=0)
        probe = keras.tree.map_structure(lambda a: a[:PROBE_SAMPLES], x)
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
    bad = ~np.isfinite(outputs).all(axis=-1)
    if bad.any():
        raise ValueError(
            f"'{model.name}' outputs non-finite values (inf or NaN) on {int(bad.sum())} of the "
            f"{len(outputs)} validation samples (the first at index {int(np.argmax(bad))}), so "
            f"no temperature can be fitted to them. Remove or repair those inputs."
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
    return outputs, labels, probe


def _check_folded(model, head, probe, logits, temperature, weights, originals):
    """Runs the folded model on the first validation inputs: its logits must
    be the old ones divided by `T`. Otherwise (`model.layers[-1]` is not
    what produces the output, as in a subclassed model that defines its
    head before other layers) the weights are restored and the call refused,
    instead of returning a model calibrated wrongly."""
    after = np.asarray(model.predict_on_batch(probe), np.float64)
    expected = logits[:len(after)] / temperature
    if head.activation.__name__ == "softmax":  # compared as probabilities: logs of 0 are clipped
        matches = np.allclose(after, softmax(expected), atol=1e-3)
    else:
        matches = np.allclose(after, expected, rtol=1e-3, atol=1e-4 * max(1.0, np.abs(expected).max()))
    if not matches:
        for weight, value in zip(weights, originals):
            weight.assign(value)
        raise ValueError(
            f"`calibrate` divided the weights of '{model.name}'s last layer '{head.name}' by "
            f"T={temperature:.4g}, but the model's outputs did not become its logits divided by "
            f"T: '{head.name}' does not compute the model's output. The weights are restored. "
            f"Calibrate a Functional or Sequential model that ends in the Dense layer of its "
            f"logits."
        )
