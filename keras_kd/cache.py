"""Teacher outputs computed once (offline distillation).

`cache_teacher_outputs` runs the teacher over a finite data set once and
returns a `tf.data.Dataset` whose batches carry the inputs, the labels and the
teacher's outputs (logits and every layer the Distiller taps). `fit` on it
does not run the teacher at all. In memory, or on disk (`path=`) for reuse
across processes: the file records a fingerprint of the teacher (architecture,
weights, taps) and of the data, and a cache whose teacher or data changed is
recomputed, with a warning, never silently reused.
"""

import hashlib
import json
import os
import shutil
import warnings

import keras
import numpy as np
import tensorflow as tf

from keras_kd import taps

INPUTS_KEY = "keras_kd_inputs"
TEACHER_KEY = "keras_kd_teacher"
_FINGERPRINT_FILE = "keras_kd_cache.json"


def cache_teacher_outputs(
    teacher, dataset, path=None, batch_size=None, shuffle=True, seed=None
):
    """Runs the teacher once over `dataset`; returns batches carrying its outputs.

    Args:
        teacher: a `keras_kd.Distiller` (its teacher, with every layer its
            losses tap) or a teacher `keras.Model` (final output only).
        dataset: a finite `tf.data.Dataset` of `x`, `(x, y)` or
            `(x, y, sample_weight)`, batched or not.
        path: a folder to keep the cache in, reusable across processes;
            `None` keeps it in memory.
        batch_size: the batch size of the returned data set; defaults to the
            input's (its first batch), or 32 for unbatched input.
        shuffle: reshuffle the samples at each epoch.
        seed: the shuffle's seed.

    Returns:
        A batched `tf.data.Dataset` to pass to `Distiller.fit`/`evaluate`.

    Raises:
        ValueError: if `dataset` is infinite or not a `tf.data.Dataset`.

    Example:

    ```python
    distiller = keras_kd.Distiller(teacher, student)
    cached = keras_kd.cache_teacher_outputs(distiller, train_ds, path="cache")
    distiller.compile(...)
    distiller.fit(cached, epochs=20)  # the teacher never runs
    ```
    """
    if not isinstance(dataset, tf.data.Dataset):
        raise ValueError(
            f"cache_teacher_outputs() takes a tf.data.Dataset, but received "
            f"{type(dataset).__name__}. Wrap arrays with "
            f"tf.data.Dataset.from_tensor_slices((x, y)).batch(64)."
        )
    if dataset.cardinality() == tf.data.INFINITE_CARDINALITY:
        raise ValueError(
            "cache_teacher_outputs() needs a finite data set, but this one "
            "repeats forever. Remove .repeat() before caching; fit repeats "
            "the cache by itself."
        )
    view, model = _teacher_view(teacher)
    batched = _is_batched(dataset, model)
    batch_size = batch_size or (_first_batch_size(dataset) if batched else 32)
    samples = dataset if not batched else dataset.unbatch()

    if path is None:
        cached = _compute(view, samples, batch_size)
    else:
        fingerprint = _fingerprint(view, samples)
        cached = _load(path, fingerprint)
        if cached is None:
            cached = _compute(view, samples, batch_size)
            _save(cached, path, fingerprint)
            cached = tf.data.Dataset.load(path)
    if shuffle:
        cached = cached.shuffle(10_000, seed=seed, reshuffle_each_iteration=True)
    return cached.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def split(x):
    """Separates cached teacher outputs from the inputs of a batch.

    Args:
        x: the `x` of a batch, cached or not.

    Returns:
        `(inputs, teacher_outputs)`, `teacher_outputs` being `None` for a
        batch that does not come from `cache_teacher_outputs`.
    """
    if isinstance(x, dict) and TEACHER_KEY in x:
        return x[INPUTS_KEY], x[TEACHER_KEY]
    return x, None


# ---------------------------------------------------------------- helpers


def _teacher_view(teacher):
    view = getattr(teacher, "_teacher_view", None)  # a Distiller
    if view is not None:
        return view, teacher.teachers[0]
    if not isinstance(teacher, keras.Model):
        raise ValueError(
            f"cache_teacher_outputs() takes a keras_kd.Distiller or a teacher "
            f"keras.Model, but received {type(teacher).__name__}."
        )
    return taps.ModelView(teacher, {}, "teacher"), teacher


def _is_batched(dataset, model):
    spec = keras.tree.flatten(dataset.element_spec)[0]
    try:
        input_rank = len(model.inputs[0].shape)
    except (AttributeError, TypeError, ValueError):
        return True
    return len(spec.shape) == input_rank


def _first_batch_size(dataset):
    first = next(iter(dataset.take(1)))
    return int(tf.shape(keras.tree.flatten(first)[0])[0])


def _compute(view, samples, batch_size):
    """Runs the teacher over all samples once; returns per-sample elements."""
    forward = tf.function(lambda x: view(x, training=False), autograph=False)
    columns = []
    for batch in samples.batch(batch_size):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(batch)
        # tf.data reads lists as tensors to stack: several teachers' outputs
        # are kept as tuples.
        outputs = taps.ViewOutputs(
            *(tuple(v) if isinstance(v, list) else v for v in forward(x))
        )
        element = {INPUTS_KEY: x, TEACHER_KEY: outputs}
        parts = [element] + [p for p in (y, sample_weight) if p is not None]
        columns.append(keras.tree.map_structure(np.asarray, tuple(parts)))
    merged = keras.tree.map_structure(lambda *a: np.concatenate(a), *columns)
    return tf.data.Dataset.from_tensor_slices(merged if len(merged) > 1 else merged[0])


def _fingerprint(view, samples):
    digest = hashlib.sha256()
    views = getattr(view, "views", [view])
    for single in views:
        model = single.model
        digest.update(json.dumps(model.get_config(), sort_keys=True, default=str).encode())
        digest.update(json.dumps(sorted(single.layers)).encode())
        for weight in model.weights:
            digest.update(np.ascontiguousarray(weight.numpy()).tobytes())
    for element in samples.batch(1024):
        for tensor in keras.tree.flatten(element):
            digest.update(np.ascontiguousarray(np.asarray(tensor)).tobytes())
    return digest.hexdigest()


def _load(path, fingerprint):
    record = os.path.join(path, _FINGERPRINT_FILE)
    if not os.path.exists(record):
        return None
    with open(record) as file:
        saved = json.load(file).get("fingerprint")
    if saved != fingerprint:
        warnings.warn(
            f"The teacher or the data changed since the cache in '{path}' was "
            f"written; recomputing it.",
            stacklevel=3,
        )
        return None
    return tf.data.Dataset.load(path)


def _save(dataset, path, fingerprint):
    if os.path.isdir(path) and os.listdir(path):
        if not os.path.exists(os.path.join(path, _FINGERPRINT_FILE)):
            raise ValueError(
                f"'{path}' already holds files that are not a keras_kd cache. "
                f"Pass an empty or new folder as path."
            )
        shutil.rmtree(path)
    dataset.save(path)
    with open(os.path.join(path, _FINGERPRINT_FILE), "w") as file:
        json.dump({"fingerprint": fingerprint}, file)
