"""Teacher outputs computed once (offline distillation).

`cache_teacher_outputs` runs the teacher over a finite data set once and
returns a `tf.data.Dataset` whose batches carry the inputs, the labels and the
teacher's outputs (logits and every layer the Distiller taps). `fit` on it
does not run the teacher at all. The teacher's outputs are streamed, a batch
at a time, into memory or into a folder on disk (`path=`, reusable across
processes) as TFRecord shards of about 64 MiB.

A folder cache is never trained on unless it is complete: it is written
beside `path` and renamed into place only after its record
(`keras_kd_cache.json`: a fingerprint of the teacher and the data, the sample
count and the sha256 of every file) is inside, so `path` either holds a
complete cache or does not exist. Each load checks that record against the
teacher, the data and the files; a cache that fails is recomputed with a
warning saying why. Partial folders of writes killed on this machine
(`.<name>.partial-*` beside `path`) are removed by the next write.
"""

import fnmatch
import glob
import hashlib
import json
import os
import shutil
import socket
import warnings

import keras
import numpy as np
import tensorflow as tf

from keras_kd import _files, _validation, lm, taps
from keras_kd._validation import as_float
from keras_kd.losses.logits import LogitsDistillation

INPUTS_KEY = "keras_kd_inputs"
TEACHER_KEY = "keras_kd_teacher"
SHUFFLE_BUFFER_BYTES = 256 * 2**20
"""Default memory budget of the shuffle buffer (256 MiB)."""
_MAX_SHUFFLE_BUFFER = 10_000
_RECORD_FILE = "keras_kd_cache.json"
_WRITER_FILE = "keras_kd_cache.writer"
_SHARD_NAME = "keras_kd_teacher-{:05d}.tfrecord"
_SHARD_PATTERN = "keras_kd_teacher-*.tfrecord"
_SHARD_BYTES = 64 * 2**20
_FORMAT = "keras_kd teacher-output cache, version 1"

__all__ = [
    "INPUTS_KEY",
    "SHUFFLE_BUFFER_BYTES",
    "TEACHER_KEY",
    "cache_teacher_outputs",
    "check_cached_outputs",
    "check_not_augmented",
    "check_top_k_temperatures",
    "holds_top_k",
    "shuffle_buffer_size",
    "split",
]


def cache_teacher_outputs(
    teacher,
    dataset,
    path=None,
    batch_size=None,
    shuffle=True,
    seed=None,
    shuffle_buffer_bytes=SHUFFLE_BUFFER_BYTES,
    top_k=None,
    top_k_dtype="float16",
    top_k_method="top",
):
    """Runs the teacher once over `dataset`; returns batches carrying its outputs.

    The teacher's outputs are streamed to memory or disk a batch at a time
    (a folder cache is written beside `path` and renamed into place when
    complete). A folder cache (`path=`) is reused only if its record matches the
    teacher (architecture, weights, taps), the data, the sample count and the
    sha256 of each of its files; verifying costs one read of the cache files,
    which is what guarantees that training never runs on partial data.
    Anything else (teacher or data changed, a file truncated, corrupted,
    missing or added, a write that was killed) is recomputed with a warning
    that names the folder and the reason.

    Args:
        teacher: a `keras_kd.Distiller` (its teacher, with every layer its
            losses tap) or a teacher `keras.Model` (final output only).
        dataset: a finite `tf.data.Dataset` of `x`, `(x, y)` or
            `(x, y, sample_weight)`, batched or not.
        path: a folder to keep the cache in, reusable across processes;
            `None` keeps it in memory.
        batch_size: the batch size of the returned data set; defaults to the
            input's (its first batch), or 32 for unbatched input.
        shuffle: reshuffle the samples (and a folder cache's shards) at each
            epoch.
        seed: the shuffle's seed.
        shuffle_buffer_bytes: memory budget of the shuffle buffer; it holds
            `budget // bytes per sample` samples, between 1 and 10,000.
        top_k: for language models: keep, per position, only the teacher's
            K most likely tokens (their log-probabilities and ids) and the
            probability of all the others (`keras_kd.lm.TopK`): `6K + 2`
            bytes per token in float16 instead of `4 V` for full float32
            logits. Logit distillation then computes the KL over the K
            tokens plus one tail bucket (`keras_kd.lm.top_k_kl`); it needs
            the forward KL at temperature 1. `None` keeps full logits.
        top_k_dtype: `"float16"`, `"bfloat16"` or `"float32"`: the storage
            type of the top-K log-probabilities.
        top_k_method: `"top"` keeps the K most likely tokens and the tail's
            mass (`keras_kd.lm.top_k_targets`); `"sampled"` keeps K tokens
            drawn from the teacher's distribution with the fraction of the
            draws each got (`keras_kd.lm.sampled_targets`): the same bytes,
            an unbiased estimate of the teacher's distribution instead of a
            truncated one (`teacher_agreement` then compares with the most
            drawn token).

    Returns:
        A batched `tf.data.Dataset` to pass to `Distiller.fit`/`evaluate`.

    Raises:
        ValueError: if `dataset` is infinite or not a `tf.data.Dataset`, or
            if `path` is a file or a folder holding other files than a
            keras_kd cache (those are never deleted).

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
    storage = _storage(view, top_k, top_k_dtype, top_k_method)
    batched = _is_batched(dataset, model)
    batch_size = batch_size or (_first_batch_size(dataset) if batched else 32)
    samples = dataset if not batched else dataset.unbatch()

    if path is None:
        generate, spec = _teacher_pass(view, samples, batch_size, storage)
        cached = tf.data.Dataset.from_generator(generate, output_signature=spec).cache()
        # One pass runs the teacher and fills the cache; fit only reads it.
        count = cached.reduce(tf.constant(0, "int64"), _add_batch_size)
        cached = cached.unbatch().apply(tf.data.experimental.assert_cardinality(count))
    else:
        path = os.path.abspath(path)
        cached = _folder_cache(view, samples, batch_size, path, shuffle, seed, storage)
    if shuffle:
        buffer = shuffle_buffer_size(cached.element_spec, shuffle_buffer_bytes)
        cached = cached.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
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
        return x[INPUTS_KEY], _from_stored(x[TEACHER_KEY])
    return x, None


def holds_top_k(data):
    """Whether `data` is a `tf.data.Dataset` of top-K cached teacher outputs."""
    if not isinstance(data, tf.data.Dataset):
        return False
    spec = data.element_spec
    x = spec[0] if isinstance(spec, tuple) else spec
    return isinstance(x, dict) and TEACHER_KEY in x and "top_k" in x[TEACHER_KEY]


def check_top_k_temperatures(data, terms):
    """Refuses a top-K cache before the first step when a logit term's
    temperature is not 1.

    A schedule that leaves 1 later is caught as the step runs.

    Args:
        data: what `fit`/`evaluate` received as `x`.
        terms: the Distiller's `keras_kd.terms.Term`s.

    Raises:
        ValueError: if `data` is a top-K cache and a `LogitsDistillation`
            term on the teacher's logits has a temperature other than 1.
    """
    if not holds_top_k(data):
        return
    for term in terms:
        if (isinstance(term.loss, LogitsDistillation) and term.teacher_path is None
                and as_float(term.temperature) != 1.0):
            raise ValueError(
                f"The data is a top-K teacher cache, which holds log-probabilities "
                f"at temperature 1, but the term '{term.name}' has temperature "
                f"{as_float(term.temperature)}. Set the LogitsDistillation "
                f"temperature to 1.0, or cache full logits (top_k=None)."
            )


def check_not_augmented(cached, augmentation):
    """Refuses cached teacher outputs for a Distiller that augments batches.

    Args:
        cached: a batch's cached teacher outputs, or `None`.
        augmentation: the Distiller's `augmentation` argument (not `None`).

    Raises:
        ValueError: if `cached` is not `None`: the cache describes the inputs
            before augmentation, so teacher and student would see different
            inputs.
    """
    if cached is not None:
        raise ValueError(
            "The batches carry cached teacher outputs, which describe "
            "the inputs before augmentation, but this Distiller "
            "augments each batch (augmentation="
            f"{augmentation!r}), so teacher and student would "
            "see different inputs. Train on the uncached data, or "
            "build the Distiller without augmentation."
        )


def check_cached_outputs(cached, teacher_spec, terms):
    """Refuses cached teacher outputs that lack what the terms read, or that
    another teacher or tokenizer produced.

    Args:
        cached: a batch's cached teacher outputs (`split(x)[1]`).
        teacher_spec: the Distiller's teacher view's symbolic outputs, or
            `None` for a subclassed teacher never called.
        terms: the Distiller's `keras_kd.terms.Term`s.

    Raises:
        ValueError: if a term reads the final output of a top-K cache, a
            tapped layer is missing, or a last axis differs from the
            teacher's (a cache built with another teacher or tokenizer would
            otherwise fail deep in a loss with a shape error, or broadcast).
    """
    needed = {term.teacher_path for term in terms if term.teacher_path is not None}
    reads_output = [t.name for t in terms if t.teacher_path is None and not t.expects_logits]
    if cached.output is None and reads_output:
        raise ValueError(
            f"The cached teacher outputs are a top-K summary of its "
            f"logits, without its final output, but {reads_output} read "
            f"the final output. Cache without top_k for these losses."
        )
    if not needed <= set(cached.taps):
        raise ValueError(
            f"The cached teacher outputs hold the layers "
            f"{sorted(cached.taps)}, but this Distiller's losses read "
            f"{sorted(needed)}. Build the cache from the Distiller, "
            f"cache_teacher_outputs(distiller, ...), so that every tapped "
            f"layer is included."
        )
    if teacher_spec is None:  # a subclassed teacher never called
        return
    pairs = [(field, getattr(teacher_spec, field), getattr(cached, field))
             for field in ("output", "logits")]
    pairs += [(f"layer '{path}'", teacher_spec.taps.get(path), value)
              for path, value in cached.taps.items()]
    for where, expected, received in pairs:
        if expected is None or received is None or isinstance(received, lm.TopK):
            continue
        for want, got in zip(keras.tree.flatten(expected), keras.tree.flatten(received)):
            if want.shape[-1] is not None and got.shape[-1] is not None and want.shape[-1] != got.shape[-1]:
                raise ValueError(
                    f"The cached teacher {where} has {got.shape[-1]} values on its "
                    f"last axis (shape {tuple(got.shape)}), but this Distiller's "
                    f"teacher gives {want.shape[-1]} (shape {tuple(want.shape)}): the "
                    f"cache was built with another teacher or tokenizer. Build it "
                    f"with cache_teacher_outputs(distiller, ...) from this Distiller."
                )


def shuffle_buffer_size(element_spec, budget_bytes=SHUFFLE_BUFFER_BYTES):
    """The number of samples a shuffle buffer of `budget_bytes` holds.

    Args:
        element_spec: the `element_spec` of one (unbatched) sample; unknown
            dimensions count as 1.
        budget_bytes: the memory budget.

    Returns:
        `budget_bytes // bytes per sample`, clamped to [1, 10,000].

    Example:

    ```python
    spec = tf.TensorSpec((28, 28, 512), "float32")  # 1.6 MB per sample
    shuffle_buffer_size(spec)  # 167
    ```
    """
    sample_bytes = sum(
        int(np.prod([d or 1 for d in spec.shape])) * max(spec.dtype.size, 1)
        for spec in keras.tree.flatten(element_spec)
    )
    return int(np.clip(budget_bytes // max(sample_bytes, 1), 1, _MAX_SHUFFLE_BUFFER))


# ------------------------------------------- the view's layout, in one place


def _storage(view, top_k, dtype, method="top"):
    """How the teacher's logits are stored: `None` (in full), `(K, dtype)`
    (top K), or `(K, dtype, "sampled")`."""
    if method not in ("top", "sampled"):
        raise ValueError(
            f"`top_k_method` must be 'top' or 'sampled', but received {method!r}."
        )
    if top_k is None:
        if method != "top":
            raise ValueError(
                f"top_k_method={method!r} needs top_k (how many tokens to draw "
                f"per position), but top_k is None. Pass e.g. top_k=16."
            )
        if dtype != "float16":
            raise ValueError(
                f"top_k_dtype={dtype!r} sets how a top-K cache stores its "
                f"log-probabilities, but top_k is None (full logits, stored as "
                f"computed). Pass top_k=K too, or leave top_k_dtype out."
            )
        return None
    top_k = _validation.check_count(top_k, "top_k")
    if dtype not in ("float16", "bfloat16", "float32"):
        raise ValueError(
            f"`top_k_dtype` must be 'float16', 'bfloat16' or 'float32', but "
            f"received {dtype!r}."
        )
    if not isinstance(view, taps.ModelView):
        raise ValueError(
            "top_k caches one teacher's distribution; several teachers are "
            "mixed from their full distributions. Cache without top_k, or "
            "distil from one teacher."
        )
    return (top_k, dtype) if method == "top" else (top_k, dtype, method)


def _to_stored(outputs, storage=None):
    """A view's `ViewOutputs` as stored: a dict, the logits once if they
    are the output, or only their top-K summary (`storage`, see `_storage`).

    tf.data reads lists as tensors to stack, so several teachers' outputs
    are kept as tuples.
    """
    if storage is not None:
        summary = lm.sampled_targets if storage[2:] == ("sampled",) else lm.top_k_targets
        top = summary(outputs.logits, *storage[:2])
        return {"top_k": top._asdict(), "taps": outputs.taps}
    as_tuples = [tuple(v) if isinstance(v, list) else v for v in outputs]
    stored = dict(zip(("output", "logits", "taps"), as_tuples))
    output, logits = keras.tree.flatten(stored["output"]), keras.tree.flatten(stored["logits"])
    if len(output) == len(logits) and all(a is b for a, b in zip(output, logits)):
        del stored["logits"]
    return stored


def _from_stored(stored):
    """The `ViewOutputs` rebuilt from `_to_stored`'s (a top-K cache has
    no final output: `output` is `None`)."""
    if "top_k" in stored:
        return taps.ViewOutputs(None, lm.TopK(**stored["top_k"]), dict(stored["taps"]))
    return taps.ViewOutputs(
        output=stored["output"],
        logits=stored.get("logits", stored["output"]),
        taps=dict(stored["taps"]),
    )


# ---------------------------------------------------------------- helpers


def _teacher_view(teacher):
    view = getattr(teacher, "teacher_view", None)  # a Distiller
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


def _teacher_pass(view, samples, batch_size, storage=None):
    """`(generate, spec)`: batches of stored elements, the teacher run as
    each is drawn, and their `element_spec` (traced, the teacher not run)."""
    batches = samples.batch(batch_size)
    x_spec, y_spec, weight_spec = keras.utils.unpack_x_y_sample_weight(batches.element_spec)
    forward = tf.function(
        lambda x: _to_stored(view(x, training=False), storage), autograph=False
    )
    outputs_spec = keras.tree.map_structure(
        lambda t: tf.TensorSpec(t.shape, t.dtype),
        forward.get_concrete_function(x_spec).structured_outputs,
    )

    def element(x, outputs, y, sample_weight):
        parts = [{INPUTS_KEY: x, TEACHER_KEY: outputs}]
        parts += [p for p in (y, sample_weight) if p is not None]
        return tuple(parts) if len(parts) > 1 else parts[0]

    def generate():
        for batch in batches:
            x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(batch)
            yield element(x, forward(x), y, sample_weight)

    return generate, element(x_spec, outputs_spec, y_spec, weight_spec)


def _add_batch_size(count, batch):
    return count + tf.shape(keras.tree.flatten(batch)[0], out_type="int64")[0]


def _folder_cache(view, samples, batch_size, path, shuffle, seed, storage):
    """Reads the verified cache in `path`, or (re)writes it first."""
    fingerprint, count = _fingerprint(view, samples, storage)
    generate, spec = _teacher_pass(view, samples, batch_size, storage)
    if os.path.isfile(path):
        raise ValueError(
            f"Cache path '{path}' is a file, but the cache is a folder. Pass a "
            f"folder path."
        )
    if os.path.isdir(path) and os.listdir(path):
        reason = _unusable_because(path, fingerprint, count)
        if reason is None:
            return _read(path, _read_record(path), spec, shuffle, seed)
        warnings.warn(
            f"The teacher-output cache in '{path}' is not used: {reason}. "
            f"Recomputing it.",
            stacklevel=3,
        )
    _remove_abandoned_writes(path)
    with _files.atomic_path(path, force=True) as partial:
        os.makedirs(partial)
        writer = os.path.join(partial, _WRITER_FILE)
        with open(writer, "w") as file:
            json.dump({"host": socket.gethostname(), "pid": os.getpid()}, file)
        written = _write(partial, generate())
        os.remove(writer)
        record = {"format": _FORMAT, "fingerprint": fingerprint, "samples": written,
                  "files": _checksums(partial)}
        with open(os.path.join(partial, _RECORD_FILE), "w") as file:
            json.dump(record, file, indent=1)
    return _read(path, record, spec, shuffle, seed)


def _write(folder, batches):
    """Writes the batches into shards of about 64 MiB; returns the sample count.

    Each record is one batch: its tensors serialized one by one. Written
    synchronously, so memory holds one batch at a time whatever the disk's
    speed (`tf.data.Dataset.save` queues without bound behind a slow disk).
    """
    samples, shards, shard_bytes, writer = 0, 0, 0, None
    try:
        for batch in batches:
            if writer is None or shard_bytes >= _SHARD_BYTES:
                if writer is not None:
                    writer.close()
                writer = tf.io.TFRecordWriter(os.path.join(folder, _SHARD_NAME.format(shards)))
                shards, shard_bytes = shards + 1, 0
            tensors = keras.tree.flatten(batch)
            serialized = tf.stack([tf.io.serialize_tensor(t) for t in tensors])
            data = tf.io.serialize_tensor(serialized).numpy()
            writer.write(data)
            shard_bytes += len(data)
            samples += int(tf.shape(tensors[0])[0])
    finally:
        if writer is not None:
            writer.close()
    return samples


def _read(path, record, spec, shuffle, seed):
    """The samples of the cache in `path`, its shards in random order if `shuffle`."""
    shards = [os.path.join(path, name) for name in sorted(record["files"])
              if fnmatch.fnmatch(name, _SHARD_PATTERN)]
    if shuffle:  # mixes samples further apart than the shuffle buffer reaches
        files = tf.data.Dataset.from_tensor_slices(shards).shuffle(len(shards), seed=seed)
        batches = files.interleave(tf.data.TFRecordDataset, cycle_length=min(4, len(shards)),
                                   num_parallel_calls=tf.data.AUTOTUNE)
    else:
        batches = tf.data.TFRecordDataset(shards)
    specs = keras.tree.flatten(spec)

    def parse(data):
        serialized = tf.io.parse_tensor(data, tf.string)
        tensors = [
            tf.ensure_shape(tf.io.parse_tensor(serialized[i], s.dtype), s.shape)
            for i, s in enumerate(specs)
        ]
        return keras.tree.pack_sequence_as(spec, tensors)

    batches = batches.map(parse, num_parallel_calls=tf.data.AUTOTUNE)
    # Fails loudly rather than train on fewer samples than the record says.
    return batches.unbatch().apply(tf.data.experimental.assert_cardinality(record["samples"]))


def _unusable_because(path, fingerprint, count):
    """Why the non-empty folder `path` is no usable cache; `None` if it is.

    Raises:
        ValueError: if the folder holds files that keras_kd did not write.
    """
    names = os.listdir(path)
    if _RECORD_FILE not in names:
        ours = all(fnmatch.fnmatch(name, _SHARD_PATTERN) for name in names)
        if not ours:
            raise ValueError(
                f"Cache path '{path}' holds files that are not a keras_kd "
                f"cache ({sorted(names)[:5]}); they are left untouched. Pass "
                f"a new or empty folder as path."
            )
        return f"it has no record ({_RECORD_FILE}), so its writing was interrupted"
    record = _read_record(path)
    if record is None:
        return (
            f"its record {_RECORD_FILE} is unreadable, incomplete or from "
            f"another keras_kd version"
        )
    if record["fingerprint"] != fingerprint:
        return "the teacher or the data changed since it was written"
    found = _checksums(path)
    files = record["files"]
    for name in sorted(set(files) | set(found)):
        if name not in found:
            return f"its file '{name}' is missing"
        if name not in files:
            return f"the file '{name}' is not part of it"
        if found[name] != files[name]:
            return f"its file '{name}' changed since it was written (truncated or corrupted)"
    if record["samples"] != count:
        return f"it holds {record['samples']} samples, but the data has {count}"
    return None


def _read_record(path):
    """The record of the cache in `path`, or `None` if unreadable or invalid."""
    try:
        with open(os.path.join(path, _RECORD_FILE)) as file:
            record = json.load(file)
    except (OSError, ValueError):
        return None
    keys = {"format", "fingerprint", "samples", "files"}
    if not isinstance(record, dict) or not keys <= set(record):
        return None
    return record if record["format"] == _FORMAT else None


def _remove_abandoned_writes(path):
    """Removes the partial folders of writes to `path` killed on this host."""
    folder, name = os.path.split(path)
    stem, suffix = os.path.splitext(name)
    for partial in glob.glob(os.path.join(folder, f".{glob.escape(stem)}.partial-*{suffix}")):
        try:
            with open(os.path.join(partial, _WRITER_FILE)) as file:
                writer = json.load(file)
        except (OSError, ValueError):
            continue  # not a cache write, or one about to be renamed
        pid = writer.get("pid") if isinstance(writer, dict) else None
        here = isinstance(pid, int) and writer.get("host") == socket.gethostname()
        if here and not _running(pid):
            shutil.rmtree(partial)


def _running(pid):
    if os.name != "posix":
        return True  # os.kill(pid, 0) would send Ctrl+C on Windows: keep it
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _checksums(path):
    """`{relative file path: sha256}` of every file of the cache but its record."""
    sums = {}
    for root, _, names in os.walk(path):
        for name in names:
            full = os.path.join(root, name)
            relative = os.path.relpath(full, path).replace(os.sep, "/")
            if relative == _RECORD_FILE:
                continue
            digest = hashlib.sha256()
            with open(full, "rb") as file:
                for block in iter(lambda: file.read(2**20), b""):
                    digest.update(block)
            sums[relative] = digest.hexdigest()
    return sums


def _fingerprint(view, samples, storage=None):
    """sha256 of the teacher(s), the storage and the data, and the number of samples."""
    digest = hashlib.sha256()
    digest.update(json.dumps(storage).encode())
    views = getattr(view, "views", [view])
    for single in views:
        model = single.model
        digest.update(json.dumps(model.get_config(), sort_keys=True, default=str).encode())
        digest.update(json.dumps(sorted(single.layers)).encode())
        for weight in model.weights:
            digest.update(np.ascontiguousarray(weight.numpy()).tobytes())
    count = 0
    for element in samples.batch(1024):
        count = int(_add_batch_size(count, element))
        for tensor in keras.tree.flatten(element):
            digest.update(np.ascontiguousarray(np.asarray(tensor)).tobytes())
    return digest.hexdigest(), count
