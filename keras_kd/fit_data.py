"""What `Distiller.fit` and `evaluate` receive, made ready and checked
against the terms and both models before the first step.

Raw text goes through the student's KerasHub preprocessor once (as
`CausalLM.fit` does); then every check that would otherwise fail deep in a
traced step, or train silently on the wrong thing, runs on the data as
given: top-K caches against temperatures and schedules, sequence lengths
against every model, ragged inputs, labels against the loss, validation
data against the training data.
"""

from keras_kd import _validation, cache, lm

__all__ = ["for_evaluate", "for_fit"]


def for_fit(distiller, x, y, sample_weight, batch_size, validation_data, callbacks):
    """`fit`'s data, preprocessed and checked.

    Args:
        distiller: the `keras_kd.Distiller` (its student, teachers, terms
            and compiled loss are read).
        x: the inputs given to `fit`.
        y: the labels given to `fit`.
        sample_weight: the sample weights given to `fit`.
        batch_size: the batch size given to `fit`.
        validation_data: `fit`'s validation data, or `None`.
        callbacks: `fit`'s callbacks, or `None`.

    Returns:
        `(x, y, sample_weight, batch_size, validation_data)` for `fit`.

    Raises:
        ValueError: with what to fix, for data the models or losses cannot
            take (see the module docstring).
    """
    x, y, sample_weight, batch_size = for_evaluate(distiller, x, y, sample_weight, batch_size)
    cache.check_top_k_schedules(x, callbacks)
    _validation.check_labels(x, y, distiller.loss, distiller.student)
    validation_data = lm.preprocess_validation_text(distiller.student, validation_data, batch_size)
    lm.check_data_fits_models(validation_data, distiller.teachers, distiller.student)
    _validation.check_validation_labels(x, y, validation_data)
    return x, y, sample_weight, batch_size, validation_data


def for_evaluate(distiller, x, y, sample_weight, batch_size):
    """`evaluate`'s data, preprocessed and checked (as `for_fit`).

    Returns:
        `(x, y, sample_weight, batch_size)`.
    """
    x, y, sample_weight, batch_size = lm.preprocess_text(
        distiller.student, x, y, sample_weight, batch_size)
    cache.check_top_k_temperatures(x, distiller._terms)  # noqa: SLF001 - the Distiller's own terms
    lm.check_data_fits_models(x, distiller.teachers, distiller.student)
    _validation.check_dense_inputs(x, distiller.student)
    return x, y, sample_weight, batch_size
