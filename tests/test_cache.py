"""Teacher-output cache: the teacher never runs in fit, and stale caches are redone."""

import json
import os
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_kd
from keras_kd import augment, cache
from keras_kd.cache import shuffle_buffer_size
from tests.helpers import dense_classifier, sparse_ce, toy_data
from tests.test_distiller import counted_classifier


def dataset(n=64, batch=16, seed=0):
    x, y = toy_data(n, seed=seed)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)


def make(teacher, losses=None, **kwargs):
    student = dense_classifier(4, name="student")
    student.set_weights(dense_classifier(4, name="init").get_weights())
    distiller = keras_kd.Distiller(teacher, student, losses, **kwargs)
    distiller.compile(optimizer=keras.optimizers.SGD(0.1), loss=sparse_ce(), metrics=["accuracy"])
    return distiller


def test_fit_on_the_cache_never_runs_the_teacher_and_matches_uncached_training():
    teacher, counter = counted_classifier(16, "teacher")
    losses = [keras_kd.LogitsDistillation(),
              keras_kd.FeatureDistillation(teacher_layer_name="hidden", student_layer_name="hidden",
                                           projection="auto")]
    keras.utils.set_random_seed(3)
    cached_distiller = make(teacher, losses)
    cached = keras_kd.cache_teacher_outputs(cached_distiller, dataset(), shuffle=False)
    counter.calls.assign(0.0)
    cached_logs = cached_distiller.fit(cached, epochs=2, verbose=0).history
    assert float(counter.calls) == 0.0
    evaluated = cached_distiller.evaluate(cached, verbose=0, return_dict=True)
    assert float(counter.calls) == 0.0

    keras.utils.set_random_seed(3)
    plain_distiller = make(teacher, [keras_kd.LogitsDistillation(),
                                     keras_kd.FeatureDistillation(teacher_layer_name="hidden",
                                                                  student_layer_name="hidden",
                                                                  projection="auto")])
    plain_logs = plain_distiller.fit(dataset(), epochs=2, verbose=0).history
    assert float(counter.calls) == 8.0  # 4 batches x 2 epochs, once each
    for a, b in zip(cached_distiller.student.get_weights(), plain_distiller.student.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert cached_logs["loss"] == pytest.approx(plain_logs["loss"], rel=1e-5)
    assert evaluated == pytest.approx(plain_distiller.evaluate(dataset(), verbose=0, return_dict=True),
                                      rel=1e-5)


def test_disk_cache_is_reused_and_redone_when_teacher_or_data_change(tmp_path):
    teacher, counter = counted_classifier(16, "teacher")
    distiller = make(teacher)
    keras_kd.cache_teacher_outputs(distiller, dataset(), path=str(tmp_path / "c"))
    assert float(counter.calls) > 0
    counter.calls.assign(0.0)
    again = keras_kd.cache_teacher_outputs(distiller, dataset(), path=str(tmp_path / "c"))
    assert float(counter.calls) == 0.0  # reused
    assert sum(1 for _ in again) == 4

    teacher.get_layer("logits").bias.assign(teacher.get_layer("logits").bias + 1.0)
    with pytest.warns(UserWarning, match="is not used: the teacher or the data changed since it was written. Recomputing it"):
        keras_kd.cache_teacher_outputs(distiller, dataset(), path=str(tmp_path / "c"))
    assert float(counter.calls) > 0
    counter.calls.assign(0.0)
    with pytest.warns(UserWarning, match="is not used: the teacher or the data changed since it was written. Recomputing it"):
        keras_kd.cache_teacher_outputs(distiller, dataset(seed=9), path=str(tmp_path / "c"))
    assert float(counter.calls) > 0


def test_unlabelled_and_unbatched_data_and_an_ensemble():
    teachers = [dense_classifier(16, name="a"), dense_classifier(8, name="b")]
    distiller = make(teachers, student_loss_weight=0.0)
    x, _ = toy_data(40)
    cached = keras_kd.cache_teacher_outputs(distiller, tf.data.Dataset.from_tensor_slices(x), batch_size=8)
    distiller.compile(optimizer="sgd")
    from_cache = distiller.evaluate(cached, verbose=0, return_dict=True)
    direct = distiller.evaluate(x, batch_size=8, verbose=0, return_dict=True)
    assert from_cache["distillation_loss"] == pytest.approx(direct["distillation_loss"], rel=1e-5)
    assert from_cache["distillation_loss"] > 0
    assert np.isfinite(distiller.fit(cached, epochs=1, verbose=0).history["loss"]).all()


def test_refusals():
    teacher = dense_classifier(16, name="teacher")
    with_features = make(teacher, [keras_kd.FeatureDistillation(teacher_layer_name="hidden",
                                                                student_layer_name="hidden",
                                                                projection="auto")])
    logits_only = keras_kd.cache_teacher_outputs(teacher, dataset())
    with pytest.raises(ValueError, match=r"The cached teacher outputs hold the layers \[\], "
                                         r"but this Distiller's losses read \['hidden'\]"):
        with_features.fit(logits_only, epochs=1, verbose=0)
    augmented = make(teacher, augmentation=augment.Mixup())
    with pytest.raises(ValueError, match=r"cached teacher outputs, which describe the inputs before "
                                         r"augmentation"):
        augmented.fit(keras_kd.cache_teacher_outputs(augmented, dataset()), epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"needs a finite data set"):
        keras_kd.cache_teacher_outputs(teacher, dataset().repeat())
    with pytest.raises(ValueError, match=r"takes a tf.data.Dataset, but received ndarray"):
        keras_kd.cache_teacher_outputs(teacher, toy_data(8)[0])


# ------------------------------------------ a folder cache is complete or redone


def built_cache(tmp_path, n=256):
    """A teacher (with its call counter), its Distiller and a folder cache."""
    teacher, counter = counted_classifier(16, "teacher")
    distiller = make(teacher)
    path = tmp_path / "c"
    keras_kd.cache_teacher_outputs(distiller, dataset(n), path=str(path))
    counter.calls.assign(0.0)
    return distiller, counter, path


def shards(path):
    return sorted(path.glob("keras_kd_teacher-*.tfrecord"))


def reloaded_in_full(distiller, counter, path, n=256, match=None):
    """Loads the cache again; checks it was recomputed and fit sees every sample."""
    with pytest.warns(UserWarning, match=match):
        cached = keras_kd.cache_teacher_outputs(distiller, dataset(n), path=str(path))
    assert float(counter.calls) == n / 16  # recomputed, each batch once
    assert sum(int(x["keras_kd_inputs"].shape[0]) for x, _ in cached) == n
    steps = []
    distiller.fit(cached, epochs=1, verbose=0,
                  callbacks=[keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: steps.append(batch))])
    assert len(steps) == n / 16
    counter.calls.assign(0.0)
    keras_kd.cache_teacher_outputs(distiller, dataset(n), path=str(path))  # now valid: no warning
    assert float(counter.calls) == 0.0


@pytest.mark.parametrize("cut", ["half", "100 bytes"])
def test_a_truncated_shard_is_detected_and_recomputed(tmp_path, cut):
    distiller, counter, path = built_cache(tmp_path)
    (shard,) = shards(path)
    size = shard.stat().st_size
    with open(shard, "r+b") as file:
        file.truncate(size // 2 if cut == "half" else size - 100)
    reloaded_in_full(distiller, counter, path, match=(
        r"The teacher-output cache in '.*c' is not used: its file 'keras_kd_teacher-00000.tfrecord' changed since "
        r"it was written \(truncated or corrupted\). Recomputing it."))


def test_a_garbage_or_missing_shard_is_detected_and_recomputed(tmp_path, monkeypatch):
    monkeypatch.setattr(cache, "_SHARD_BYTES", 1000)  # 8 shards of 2 batches
    distiller, counter, path = built_cache(tmp_path)
    assert len(shards(path)) == 8
    shards(path)[1].write_bytes(np.random.default_rng(0).bytes(shards(path)[1].stat().st_size))
    reloaded_in_full(distiller, counter, path,
                     match=r"its file 'keras_kd_teacher-00001.tfrecord' changed since it was written")
    shards(path)[2].unlink()
    reloaded_in_full(distiller, counter, path,
                     match=r"'.*c' is not used: its file 'keras_kd_teacher-00002.tfrecord' is missing")
    (path / "extra.bin").write_bytes(b"x")
    reloaded_in_full(distiller, counter, path, match=r"the file 'extra.bin' is not part of it")


def test_a_half_written_or_missing_record_is_an_interrupted_write(tmp_path):
    distiller, counter, path = built_cache(tmp_path)
    record = path / "keras_kd_cache.json"
    record.write_text(record.read_text()[: len(record.read_text()) // 2])
    reloaded_in_full(distiller, counter, path, match=(
        r"'.*c' is not used: its record keras_kd_cache.json is unreadable, incomplete or from "
        r"another keras_kd version"))
    record.unlink()  # as a run killed before the record was written
    reloaded_in_full(distiller, counter, path, match=(
        r"'.*c' is not used: it has no record \(keras_kd_cache.json\), so its writing was "
        r"interrupted"))


def test_partial_folders_of_killed_writes_are_removed_and_running_ones_kept(tmp_path):
    teacher, counter = counted_classifier(16, "teacher")
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    killed, running = tmp_path / ".c.partial-0badf00d", tmp_path / ".c.partial-1234abcd"
    for folder, pid in ((killed, finished.pid), (running, os.getpid())):
        folder.mkdir()
        (folder / "keras_kd_cache.writer").write_text(json.dumps({"host": socket.gethostname(), "pid": pid}))
    cached = keras_kd.cache_teacher_outputs(make(teacher), dataset(), path=str(tmp_path / "c"))
    assert not killed.exists() and running.exists()
    assert sum(1 for _ in cached) == 4 and float(counter.calls) == 4.0
    assert sorted(p.name for p in tmp_path.iterdir()) == [".c.partial-1234abcd", "c"]


def test_folders_that_are_not_a_keras_kd_cache_are_refused_and_left_untouched(tmp_path):
    teacher = dense_classifier(16, name="teacher")
    user = tmp_path / "user"
    tf.data.Dataset.range(5).save(str(user / "snapshot"))
    (user / "notes.txt").write_text("mine")
    before = {p: p.read_bytes() for p in user.rglob("*") if p.is_file()}
    for folder in (user, user / "snapshot"):
        with pytest.raises(ValueError, match=rf"Cache path '.*{folder.name}' holds files that are not a "
                                             rf"keras_kd cache .*; they are left untouched. Pass a new "
                                             rf"or empty folder as path."):
            keras_kd.cache_teacher_outputs(teacher, dataset(), path=str(folder))
    assert {p: p.read_bytes() for p in user.rglob("*") if p.is_file()} == before
    with pytest.raises(ValueError, match=r"Cache path '.*notes.txt' is a file, but the cache is a folder"):
        keras_kd.cache_teacher_outputs(teacher, dataset(), path=str(user / "notes.txt"))
    (tmp_path / "empty").mkdir()
    assert sum(1 for _ in keras_kd.cache_teacher_outputs(teacher, dataset(), path=str(tmp_path / "empty"))) == 4


# ------------------------------------------------------------ size and speed


def test_logits_equal_to_the_output_are_stored_once(tmp_path):
    logits_teacher = dense_classifier(16, name="teacher")
    inputs = keras.Input((8,))
    softmax_teacher = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(inputs))
    for teacher, folder, stored in ((logits_teacher, "a", ["output"]),
                                    (softmax_teacher, "b", ["logits", "output"])):
        cached = keras_kd.cache_teacher_outputs(teacher, dataset(), path=str(tmp_path / folder))
        first_batch = next(iter(tf.data.TFRecordDataset(shards(tmp_path / folder))))
        assert len(tf.io.parse_tensor(first_batch, tf.string)) == len(stored) + 2  # + x and y
        x, _ = next(iter(cached))
        _, outputs = cache.split(x)
        expected = teacher(x["keras_kd_inputs"])
        np.testing.assert_allclose(outputs.output, expected, rtol=1e-6)
        # The softmax teacher's logits are its Dense's pre-activation.
        probabilities = keras.ops.softmax(outputs.logits) if folder == "b" else outputs.logits
        np.testing.assert_allclose(probabilities, expected, rtol=1e-5, atol=1e-6)


def test_the_teacher_runs_once_per_batch_when_building_and_never_after(tmp_path):
    teacher, counter = counted_classifier(16, "teacher")
    distiller = make(teacher)
    for path in (None, str(tmp_path / "c")):
        counter.calls.assign(0.0)
        cached = keras_kd.cache_teacher_outputs(distiller, dataset(), path=path)
        assert float(counter.calls) == 4.0  # 64 samples, 4 batches of 16
        distiller.fit(cached, epochs=2, verbose=0)
        assert float(counter.calls) == 4.0


def test_the_shuffle_buffer_is_bounded_by_bytes():
    feature = tf.TensorSpec((28, 28, 512), "float32")  # 1.6 MB a sample
    assert shuffle_buffer_size(feature) == 256 * 2**20 // (28 * 28 * 512 * 4) == 167
    assert shuffle_buffer_size((feature, tf.TensorSpec((), "int64")), 2 * 2**20) == 1
    assert shuffle_buffer_size({"x": tf.TensorSpec((8,), "float32"), "y": tf.TensorSpec((), "int32")}) == 10_000
    assert shuffle_buffer_size(tf.TensorSpec((None, 100), "float32"), 4000) == 10
    teacher = dense_classifier(16, name="teacher")
    one_sample_buffer = keras_kd.cache_teacher_outputs(teacher, dataset(), shuffle_buffer_bytes=1, seed=0)
    assert sum(int(x["keras_kd_inputs"].shape[0]) for x, _ in one_sample_buffer) == 64


@pytest.mark.parametrize("failure", [PermissionError(13, "Permission denied"), OSError(28, "No space left on device")])
def test_a_cache_that_cannot_be_written_names_the_path_given(tmp_path, monkeypatch, failure):
    real_makedirs = os.makedirs

    def refused(path, *args, **kwargs):  # a read-only folder, or a full disk, as the write starts
        if ".partial-" in os.fspath(path):
            raise type(failure)(failure.errno, failure.strerror, os.fspath(path))
        return real_makedirs(path, *args, **kwargs)

    monkeypatch.setattr(os, "makedirs", refused)
    path = str(tmp_path / "readonly" / "cache")
    with pytest.raises(OSError, match=rf"^The teacher-output cache cannot be written at '{path}' \({failure.strerror}\); "
                                      r"nothing was kept there\. Pass a path in a folder you can write to"):
        keras_kd.cache_teacher_outputs(make(dense_classifier(16, name="teacher")), dataset(), path=path)
    assert not [p for p in tmp_path.rglob("*") if ".partial-" in p.name]
