"""Small models and data shared by the tests."""

import keras
import numpy as np


def dense_classifier(width, classes=3, features=8, name=None, **dense_kwargs):
    """A small Functional MLP: Input -> Dense(width, relu) -> Dense(classes)."""
    inputs = keras.Input((features,), name="x")
    hidden = keras.layers.Dense(
        width, activation="relu", name="hidden", **dense_kwargs
    )(inputs)
    logits = keras.layers.Dense(classes, name="logits", **dense_kwargs)(hidden)
    return keras.Model(inputs, logits, name=name)


def toy_data(n=64, features=8, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype("float32")
    y = rng.integers(0, classes, size=n)
    return x, y


def sparse_ce():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def numpy_log_softmax(z):
    """log softmax over the last axis, in float64."""
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def numpy_softmax(z):
    """softmax over the last axis, in float64."""
    return np.exp(numpy_log_softmax(z))


def loss_value(loss, teacher, student, **kwargs):
    """`loss.compute_loss` on float32 arrays of the given logits, as a float."""
    return float(loss.compute_loss(keras.ops.array(teacher, "float32"),
                                   keras.ops.array(student, "float32"), **kwargs))


def numpy_kl(teacher_logits, student_logits, temperature=1.0, mask=None):
    """T² KL(softmax(t/T) || softmax(s/T)), averaged over (real) positions."""
    log_p = numpy_log_softmax(np.asarray(teacher_logits, np.float64) / temperature)
    log_q = numpy_log_softmax(np.asarray(student_logits, np.float64) / temperature)
    kl = (np.exp(log_p) * (log_p - log_q)).sum(axis=-1) * temperature**2
    if mask is None:
        return float(kl.mean())
    mask = np.asarray(mask, np.float64)
    return float((kl * mask).sum() / mask.sum())


def round_trip(obj):
    """`obj` serialized, through JSON text, and deserialized, as a saved
    `.keras` file would carry it (Keras's `run_class_serialization_test`
    goes through JSON too); also checks that the config survives unchanged."""
    import json

    config = keras.saving.serialize_keras_object(obj)
    restored = keras.saving.deserialize_keras_object(json.loads(json.dumps(config)))
    assert keras.saving.serialize_keras_object(restored) == config
    return restored


def save_demo_models(folder):
    """Saves the demo's teacher (one epoch on MNIST-1D) and untrained student
    as `teacher.keras` and `student.keras` in `folder`."""
    from keras_kd.app import datasets, demo

    (x, y), _ = datasets.mnist1d()
    teacher = demo.teacher_model()
    teacher.compile("adam", demo.hard_label_loss())
    teacher.fit(x, y, batch_size=256, epochs=1, verbose=0)
    teacher.save(folder / "teacher.keras")
    demo.student_model().save(folder / "student.keras")
