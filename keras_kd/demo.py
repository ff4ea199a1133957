"""`keras-kd demo`: teacher, student from labels and distilled student on
MNIST-1D, side by side."""

import os
import time

import keras
import tensorflow as tf

from keras_kd import augment, datasets
from keras_kd.distiller import Distiller
from keras_kd.export import export_student
from keras_kd.losses.logits import LogitsDistillation

EPOCHS = 300
QUICK_EPOCHS = 3
QUICK_SAMPLES = 1000
BATCH_SIZE = 64
LEARNING_RATE = 3e-3
CLASSES = 10
STUDENT_HIDDEN = 32


def teacher_model(name="teacher"):
    """The demo's teacher: a 1-D CNN with global average pooling (20.5k weights)."""
    layers = keras.layers
    inputs = keras.Input((40, 1), name="signal")
    x = layers.Conv1D(32, 5, padding="same", activation="relu", name="conv1")(inputs)
    x = layers.Conv1D(32, 5, strides=2, padding="same", activation="relu", name="conv2")(x)
    x = layers.Conv1D(48, 5, strides=2, padding="same", activation="relu", name="conv3")(x)
    x = layers.Conv1D(48, 3, padding="same", activation="relu", name="conv4")(x)
    x = layers.GlobalAveragePooling1D(name="pool")(x)
    return keras.Model(inputs, layers.Dense(CLASSES, name="logits")(x), name=name)


def student_model(name="student"):
    """The demo's student: one small convolution and a flat dense head.

    Without pooling it has no built-in translation invariance, which MNIST-1D
    needs: from 4000 labels it overfits; a teacher can show it the function.
    """
    layers = keras.layers
    inputs = keras.Input((40, 1), name="signal")
    x = layers.Conv1D(8, 5, padding="same", activation="relu", name="conv1")(inputs)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(STUDENT_HIDDEN, activation="relu", name="hidden")(x)
    return keras.Model(inputs, layers.Dense(CLASSES, name="logits")(x), name=name)


def optimizer(epochs, samples):
    """Adam with cosine decay over the whole run."""
    steps = epochs * -(-samples // BATCH_SIZE)
    schedule = keras.optimizers.schedules.CosineDecay(LEARNING_RATE, steps)
    return keras.optimizers.Adam(schedule)


def hard_label_loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def mixup_batches(x, y, seed=None):
    """Shuffled batches mixed pairwise (mixup, lam ~ Uniform = Beta(1, 1)),
    with the one-hot labels mixed alike: the labels-only recipe."""
    def mix(inputs, labels):
        batch = tf.shape(inputs)[0]
        lam = tf.random.uniform([batch, 1])
        partner = tf.random.shuffle(tf.range(batch))
        lam_x = tf.reshape(lam, [batch] + [1] * (len(inputs.shape) - 1))
        inputs = lam_x * inputs + (1 - lam_x) * tf.gather(inputs, partner)
        return inputs, lam * labels + (1 - lam) * tf.gather(labels, partner)

    dataset = tf.data.Dataset.from_tensor_slices((x, tf.one_hot(y, CLASSES)))
    dataset = dataset.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(BATCH_SIZE).map(mix).prefetch(tf.data.AUTOTUNE)


def train_on_labels(model, x, y, epochs, mixup=True, seed=None, callbacks=(),
                    validation_data=None, verbose="auto"):
    """Trains `model` from labels alone, with mixup by default; returns it."""
    if mixup:
        data, loss = mixup_batches(x, y, seed), keras.losses.CategoricalCrossentropy(from_logits=True)
        if validation_data is not None:
            validation_data = (validation_data[0], tf.one_hot(validation_data[1], CLASSES))
    else:
        data, loss = (tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=seed)
                      .batch(BATCH_SIZE)), hard_label_loss()
    model.compile(optimizer(epochs, len(x)), loss, metrics=["accuracy"])
    model.fit(data, epochs=epochs, callbacks=list(callbacks), validation_data=validation_data,
              verbose=verbose)
    return model


def distiller_recipe(teacher, student, epochs, samples, seed=None):
    """keras_kd's recipe for MNIST-1D: consistent mixup, pure distillation.

    Teacher and student see the same mixup view of each batch; the student
    learns the teacher's whole distribution (T=1) on it, without hard labels,
    for the whole (patient) schedule.

    Reference:
        Beyer et al., "Knowledge distillation: A good teacher is patient and
        consistent", CVPR 2022, arXiv:2106.05237.
    """
    distiller = Distiller(
        teacher,
        student,
        LogitsDistillation(temperature=1.0),
        student_loss_weight=0.0,
        augmentation=augment.Mixup(alpha=1.0, seed=seed),
    )
    distiller.compile(optimizer(epochs, samples), metrics=["accuracy"])
    return distiller


def run(output="kd_output", quick=False, epochs=None, seed=0):
    """Trains the three models, prints the table and writes the files.

    Args:
        output: folder for `teacher.keras`, `student_alone.keras`,
            `student.keras`, `student.tflite` (int8) and `logs/`
            (TensorBoard: one run per model).
        quick: a short run on a subset, for a smoke test.
        epochs: epochs per model; defaults to the recipe's.
        seed: random seed.

    Returns:
        The table's rows, one dict per model.
    """
    epochs = epochs or (QUICK_EPOCHS if quick else EPOCHS)
    (x_train, y_train), (x_test, y_test) = datasets.mnist1d()
    if quick:
        x_train, y_train = x_train[:QUICK_SAMPLES], y_train[:QUICK_SAMPLES]
    os.makedirs(output, exist_ok=True)
    logs = os.path.join(output, "logs")

    def board(run_name):
        return keras.callbacks.TensorBoard(os.path.join(logs, run_name))

    rows = []

    def record(name, model, file_name, seconds):
        path = os.path.join(output, file_name)
        save_for_inference(model, path)
        rows.append(
            {
                "model": name,
                "accuracy": accuracy(model, x_test, y_test),
                "parameters": model.count_params(),
                "bytes": os.path.getsize(path),
                "seconds": seconds,
            }
        )

    keras.utils.set_random_seed(seed)
    print(f"== teacher: {epochs} epochs on labels, with mixup")
    start = time.perf_counter()
    teacher = train_on_labels(teacher_model(), x_train, y_train, epochs, seed=seed,
                              callbacks=[board("teacher")], validation_data=(x_test, y_test))
    record("teacher", teacher, "teacher.keras", time.perf_counter() - start)

    keras.utils.set_random_seed(seed)
    print(f"== student from labels alone, with mixup: {epochs} epochs")
    start = time.perf_counter()
    alone = train_on_labels(student_model(), x_train, y_train, epochs, seed=seed,
                            callbacks=[board("student_alone")], validation_data=(x_test, y_test))
    record("student, labels alone", alone, "student_alone.keras", time.perf_counter() - start)

    keras.utils.set_random_seed(seed)
    print(f"== student distilled by keras_kd (consistent mixup): {epochs} epochs")
    student = student_model()
    distiller = distiller_recipe(teacher, student, epochs, len(x_train), seed)
    start = time.perf_counter()
    distiller.fit(
        x_train, y_train, batch_size=BATCH_SIZE, epochs=epochs,
        validation_data=(x_test, y_test), callbacks=[board("distilled")], verbose="auto",
    )
    seconds = time.perf_counter() - start
    record("student, distilled", student, "student.keras", seconds)

    print("== int8 TFLite file of the distilled student")
    report = export_student(
        student, os.path.join(output, "student.tflite"), quantization="int8",
        representative_data=x_train, evaluation_data=(x_test, y_test),
    )
    rows.append(
        {
            "model": "student, distilled, int8 .tflite",
            "accuracy": report["accuracy_exported"],  # measured by running the file
            "parameters": student.count_params(),
            "bytes": report["bytes"],
            "seconds": None,
        }
    )

    print()
    print(format_table(rows))
    print(f"\nFiles in {output}/; TensorBoard: tensorboard --logdir {logs}")
    return rows


def accuracy(model, x, y):
    """Top-1 accuracy of a model's predictions."""
    predictions = model.predict(x, batch_size=1024, verbose=0)
    return float((predictions.argmax(axis=-1) == y).mean())


def save_for_inference(model, path):
    """Saves architecture and weights only (no optimizer state)."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    copy.save(path)


def format_table(rows):
    """The demo's table as text."""
    header = ("model", "test accuracy", "parameters", "size on disk", "training time")
    lines = [
        (
            row["model"],
            f"{100 * row['accuracy']:.1f}%",
            f"{row['parameters']:,}",
            f"{row['bytes'] / 1024:.1f} KiB",
            "-" if row["seconds"] is None else f"{row['seconds']:.1f} s",
        )
        for row in rows
    ]
    widths = [max(len(str(c)) for c in column) for column in zip(header, *lines)]
    def fmt(cells):
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths))
        )
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(l) for l in lines])
