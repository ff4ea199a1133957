"""`keras-kd demo`: teacher, student from labels and distilled student on
MNIST-1D, side by side."""

import os
import time

import keras
import tensorflow as tf

from keras_kd import augment
from keras_kd._files import check_output_folder
from keras_kd.app import datasets, report
from keras_kd.distiller import Distiller
from keras_kd.export import export_student, save_for_inference
from keras_kd.losses.logits import LogitsDistillation

OUTPUT = "kd_output"
QUICK_OUTPUT = "kd_output_quick"  # never over a full run's files
EPOCHS = 300
QUICK_EPOCHS = 3
QUICK_SAMPLES = 1000
BATCH_SIZE = 64
LEARNING_RATE = 3e-3
CLASSES = 10
STUDENT_CHANNELS = 16


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
    """The demo's student: two strided convolutions and a linear head (3.0k
    weights, 6.8x fewer than the teacher).

    Chosen on the validation split among small 1-D CNNs: a convolution with
    a 10.6k-weight dense head scored lower there, from labels and distilled.
    """
    layers = keras.layers
    inputs = keras.Input((40, 1), name="signal")
    x = layers.Conv1D(STUDENT_CHANNELS, 5, strides=2, padding="same", activation="relu",
                      name="conv1")(inputs)
    x = layers.Conv1D(STUDENT_CHANNELS, 5, strides=2, padding="same", activation="relu",
                      name="conv2")(x)
    x = layers.Flatten(name="flatten")(x)
    return keras.Model(inputs, layers.Dense(CLASSES, name="logits")(x), name=name)


def optimizer(epochs, samples):
    """Adam with cosine decay over the whole run."""
    steps = epochs * -(-samples // BATCH_SIZE)
    schedule = keras.optimizers.schedules.CosineDecay(LEARNING_RATE, steps)
    return keras.optimizers.Adam(schedule)


def hard_label_loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


AUGMENTATIONS = ("shift + CutMix", "shift", "none")


def recipe_augmentation(seed=None, kind="shift + CutMix"):
    """The augmentation every demo model trains with: random shifts, then
    CutMix (a window of another sample pasted in).

    Args:
        seed: the augmentation's seed.
        kind: one of `AUGMENTATIONS`: `"shift"` leaves CutMix out,
            `"none"` returns `None` (no augmentation).
    """
    if kind not in AUGMENTATIONS:
        raise ValueError(f"Unknown augmentation {kind!r}; pass one of {AUGMENTATIONS}.")
    if kind == "none":
        return None
    shift = augment.RandomShift(6, seed=seed)
    return shift if kind == "shift" else augment.Pipeline([shift, augment.CutMix(seed=seed)])


def labelled_batches(x, y, augmentation=None, seed=None):
    """Shuffled batches; with an augmentation, its (mixed) labels become soft
    one-hot targets, for training without a teacher."""
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=seed)
    dataset = dataset.batch(BATCH_SIZE)
    if augmentation is not None:
        def apply(inputs, labels):
            inputs, targets = augmentation(inputs, [(labels, None)])
            return inputs, sum(w[:, None] * tf.one_hot(t, CLASSES) for t, w in targets)

        dataset = dataset.map(apply)
    return dataset.prefetch(tf.data.AUTOTUNE)


def train_on_labels(model, x, y, epochs, augmentation=None, seed=None, callbacks=(),
                    validation_data=None, verbose="auto"):
    """Trains `model` from labels alone (optionally augmented); returns it."""
    if augmentation is None:
        loss = hard_label_loss()
    else:
        loss = keras.losses.CategoricalCrossentropy(from_logits=True)
        if validation_data is not None:
            validation_data = (validation_data[0], tf.one_hot(validation_data[1], CLASSES))
    model.compile(optimizer(epochs, len(x)), loss, metrics=["accuracy"])
    model.fit(labelled_batches(x, y, augmentation, seed), epochs=epochs, callbacks=list(callbacks),
              validation_data=validation_data, shuffle=False, verbose=verbose)
    return model


def distiller_recipe(teacher, student, epochs, samples, seed=None, augmentation="shift + CutMix",
                     temperature=1.0, features=None):
    """keras_kd's recipe for MNIST-1D: consistent augmentation, pure distillation.

    Teacher and student see the same shifted, CutMix-ed view of each batch;
    the student learns the teacher's whole distribution (T=1) on it, without
    hard labels, for the whole (patient) schedule. `recipe_settings` says
    when to drop the augmentation (many unlabelled inputs).

    Args:
        teacher: the trained teacher.
        student: the student to train.
        epochs: epochs of the schedule.
        samples: samples per epoch (with `epochs`, the cosine decay's length).
        seed: the augmentation's seed.
        augmentation: one of `AUGMENTATIONS` (`recipe_augmentation`'s
            kinds); `"none"` trains on the inputs as they are.
        temperature: the softmax temperature of the teacher-only loss.
        features: `None` (the recipe: the logit loss alone) or a list of
            further distillation losses, e.g. the feature hints
            `keras_kd.plan_features(teacher, student)` proposes, added after
            the logit loss with weight 1.0 each (the Distiller's default).
            The demo itself passes none.

    Returns:
        A compiled `Distiller`; it needs no labels.

    Reference:
        Beyer et al., "Knowledge distillation: A good teacher is patient and
        consistent", CVPR 2022, arXiv:2106.05237.
    """
    distiller = Distiller(
        teacher,
        student,
        [LogitsDistillation(temperature=temperature), *(features or [])],
        student_loss_weight=0.0,
        augmentation=recipe_augmentation(seed, augmentation),
    )
    distiller.compile(optimizer(epochs, samples), metrics=["accuracy"])
    return distiller


PLENTIFUL_INPUTS = 10  # unlabelled inputs per labelled one from which augmentation is dropped


def recipe_settings(labelled, unlabelled=0):
    """The recipe's options (`distiller_recipe`'s) for the data at hand.

    Rule: consistent shift + CutMix at T=1 while inputs are scarce; no
    augmentation, at T=1, once there are at least `PLENTIFUL_INPUTS` (10)
    times as many unlabelled inputs as labelled ones. Strong augmentation
    makes up for scarce inputs, but once inputs are plentiful the small
    student spends its capacity on spliced, shifted views the test never
    shows.

    Chosen on the validation split (400 samples, seed 0) of the "teacher
    knows more" benchmark (`python -m benchmarks.accuracy --compare-recipes`;
    teacher trained on 40,000 other samples, 17,100 steps per student):

    | candidate            | 3,600 labelled | + 36,400 unlabelled |
    |----------------------|----------------|---------------------|
    | shift + CutMix, T=1  | 94.5           | 92.2                |
    | shift + CutMix, T=2  | 92.8           | 92.5                |
    | shift only, T=1      | 93.5           | 96.2                |
    | no augmentation, T=1 | 92.0           | 96.0                |
    | no augmentation, T=2 | 94.5           | 95.5                |

    Candidates within one validation sample (0.25 points) of the best are
    taken as tied (the standard error of an accuracy near 95% on 400
    samples is about 1 point). On the 3,600 the tie goes to shift + CutMix
    at T=1, also the best on validation when the teacher learned from the
    same 3,600; with the unlabelled inputs, to the simplest recipe, no
    augmentation (shift only was one sample better, 385 vs 384 of 400).
    Only the ratios 0 and 10.1 were measured: where between them
    augmentation stops paying is not known.

    Args:
        labelled: the number of labelled training inputs.
        unlabelled: the number of further inputs without labels.

    Returns:
        `distiller_recipe`'s options: `{"augmentation": one of
        AUGMENTATIONS, "temperature": float}`.
    """
    plentiful = unlabelled >= PLENTIFUL_INPUTS * labelled
    return {"augmentation": "none" if plentiful else "shift + CutMix", "temperature": 1.0}


FILES = ("teacher.keras", "student_alone.keras", "student.keras", "student.tflite", "report.html")
"""The files `run` writes in its output folder."""


def run(output=None, quick=False, epochs=None, seed=0, force=False):
    """Trains the three models, prints the table and writes the files.

    Args:
        output: folder for `teacher.keras`, `student_alone.keras`,
            `student.keras`, `student.tflite` (int8), `report.html` (the
            table and figures: accuracy against size, reliability of
            teacher and student, per-class agreement) and `logs/`
            (TensorBoard: one run per model); defaults to `kd_output`, or
            `kd_output_quick` with `quick`.
        quick: a short run on a subset, for a smoke test: the table says
            its accuracies are not results.
        epochs: epochs per model; defaults to the recipe's.
        seed: random seed.
        force: replace the files of `FILES` already in `output`; without
            it they are refused before anything is trained.

    Returns:
        The table's rows, one dict per model.

    Raises:
        ValueError: if `output` is a file or cannot be written, or holds
            files of `FILES` while `force` is false.
    """
    epochs = epochs or (QUICK_EPOCHS if quick else EPOCHS)
    output = output or (QUICK_OUTPUT if quick else OUTPUT)
    check_output_folder(output, FILES, force, "Demo output folder")
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
        save_for_inference(model, path, force)
        rows.append(
            {
                "model": name,
                "accuracy": accuracy(model, x_test, y_test),
                "parameters": model.count_params(),
                "bytes": os.path.getsize(path),
                "seconds": seconds,
            }
        )

    def from_labels(builder, run_name, title):
        keras.utils.set_random_seed(seed)
        print(f"== {title}: {epochs} epochs on labels, shifted and CutMix-ed")
        start = time.perf_counter()
        model = train_on_labels(builder(), x_train, y_train, epochs, recipe_augmentation(seed),
                                seed, callbacks=[board(run_name)], validation_data=(x_test, y_test))
        return model, time.perf_counter() - start

    teacher, seconds = from_labels(teacher_model, "teacher", "teacher")
    record("teacher", teacher, "teacher.keras", seconds)
    alone, seconds = from_labels(student_model, "student_alone", "student from labels alone")
    record("student, labels alone", alone, "student_alone.keras", seconds)

    keras.utils.set_random_seed(seed)
    print(f"== student distilled by keras_kd (same augmentation, teacher instead of labels): "
          f"{epochs} epochs")
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
    exported = export_student(
        student, os.path.join(output, "student.tflite"), quantization="int8",
        representative_data=x_train, evaluation_data=(x_test, y_test),
        force=force,
    )
    rows.append(
        {
            "model": "student, distilled, int8 .tflite",
            "accuracy": exported["accuracy_exported"],  # measured by running the file
            "parameters": student.count_params(),
            "bytes": exported["bytes"],
            "seconds": None,
        }
    )

    note = None
    if quick:
        note = (f"Quick run ({len(x_train)} samples, {epochs} epochs): a smoke test of the pipeline, "
                f"not results. Run `keras-kd demo` without --quick for the comparison.")
    report.write(
        os.path.join(output, "report.html"), rows, table_cells(rows), y_test,
        probabilities(teacher, x_test), probabilities(student, x_test), note, force,
    )
    print()
    print(format_table(rows))
    if note:
        print(note)
    print(f"\nFiles in {output}/ (report.html: table and figures); "
          f"TensorBoard: tensorboard --logdir {logs}")
    return rows


def accuracy(model, x, y):
    """Top-1 accuracy of a model's predictions."""
    predictions = model.predict(x, batch_size=1024, verbose=0)
    return float((predictions.argmax(axis=-1) == y).mean())


def probabilities(model, x):
    """Softmax of a demo model's logits, as a NumPy array."""
    logits = model.predict(x, batch_size=1024, verbose=0)
    return keras.ops.convert_to_numpy(keras.ops.softmax(logits, axis=-1))


def format_table(rows):
    """The demo's table as text."""
    return text_table(*table_cells(rows))


def table_cells(rows):
    """The demo's table as `(header, lines)` of str cells (printed and in report.html)."""
    header = ("model", "test accuracy", "parameters", "size on disk", "training time")
    return header, [
        (
            row["model"],
            f"{100 * row['accuracy']:.1f}%",
            f"{row['parameters']:,}",
            f"{row['bytes'] / 1024:.1f} KiB",
            "-" if row["seconds"] is None else f"{row['seconds']:.1f} s",
        )
        for row in rows
    ]


def text_table(header, lines):
    """A plain-text table: the first column left-aligned, the others right.

    Args:
        header: the column titles.
        lines: rows of cells (str), as many as `header` has.

    Returns:
        The table as one string: header, a rule, the rows.
    """
    widths = [max(len(str(c)) for c in column) for column in zip(header, *lines)]
    def fmt(cells):
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths))
        )
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(line) for line in lines])
