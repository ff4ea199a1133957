"""Builds a teacher-output cache of N token sequences on disk; prints the peak
RSS growth of the build and the cache's size (run by tests/test_lm.py, one
process per size, so that peaks do not mix)."""

import json
import os
import resource
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_kd  # noqa: E402
from tests.test_lm import causal_lm  # noqa: E402

LENGTH = 16  # the test models' max_sequence_length


def sequences(count):
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 258, size=(count, LENGTH)).astype("int32")
    return tf.data.Dataset.from_tensor_slices({"token_ids": ids, "padding_mask": np.ones_like(ids)}).batch(32)


def peak_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def main(count, folder):
    teacher = causal_lm(32, 1, "teacher", vocabulary=258)
    keras_kd.cache_teacher_outputs(teacher, sequences(64), path=os.path.join(folder, "warm"))
    before = peak_bytes()
    keras_kd.cache_teacher_outputs(teacher, sequences(count), path=os.path.join(folder, "cache"))
    size = sum(entry.stat().st_size for entry in os.scandir(os.path.join(folder, "cache")))
    print(json.dumps({"growth": peak_bytes() - before, "cache_bytes": size}))


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
