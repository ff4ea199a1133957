"""Int8 LiteRT accuracy on MNIST-1D: post-training int8 vs quantization-aware training/distillation.

    python -m benchmarks.quantization [--seeds 3] [--student narrow]
        [--probe [STUDENT ...]]

For each seed: a teacher (a wider 1-D CNN) learns MNIST-1D from labels; a
MobileNetV3-style student (depthwise convolutions, BatchNormalization,
hard-swish, narrow layers) is distilled from it (logits, T=4). Then, from
that float student:

- "PTQ int8": `export_student(..., quantization="int8")` calibrated on 200
  training inputs (post-training quantization);
- "QAT int8, labels": `keras_kd.quantization_aware(student)` fine-tuned on
  labels alone for `FINE_TUNE_EPOCHS` epochs, exported to int8;
- "QAD int8": the same, fine-tuned with the teacher (`keras_kd.Distiller`,
  logits, T=4) for the same number of steps, exported to int8;
- "float distilled, + fine-tune": a control, the float student distilled
  for the same extra steps without quantization (what the fine-tune alone
  gives).

Every run uses Adam with cosine decay to 0 (3e-3 for the teacher and the
student, 3e-4 for the fine-tunes), batch 64.

Every accuracy is the test split's (1000 samples) through the file in the
LiteRT interpreter (the float row through Keras), after the last epoch; no
choice was tuned on the test split. `--probe` trains the candidate students
on labels for one seed and prints float vs post-training int8 for each.
Results go to benchmarks/quantization_results.md.
"""

import argparse
import os
import sys
import tempfile

import keras
import numpy as np

import keras_kd
from keras_kd.app import datasets

EPOCHS = 30
STUDENT = "narrow"
FINE_TUNE_EPOCHS = 5
BATCH = 64
TEMPERATURE = 4.0


def say(*args):
    print(*args, flush=True)


def teacher_model():
    inputs = keras.Input((40, 1), name="signal")
    x = inputs
    for width in (32, 64, 64):
        x = keras.layers.Conv1D(width, 5, padding="same", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x), name="teacher")


# The students tried: (stem width, [(block width, stride), ...]). Each block is
# a depthwise convolution + BN + hard-swish and a 1x1 projection + BN, with a
# residual add where the shape allows and hard-swish after the others.
STUDENTS = {
    "mobilenet": (16, [(16, 1), (24, 2), (32, 2)]),
    "narrow": (8, [(8, 1), (12, 2), (16, 2)]),
    "tiny": (4, [(4, 1), (6, 2), (8, 2)]),
    "deep": (8, [(8, 1), (8, 1), (12, 2), (12, 1), (16, 2), (16, 1)]),
    "micro": (3, [(3, 1), (4, 2), (6, 2)]),
    "micro2": (4, [(4, 1), (4, 2), (4, 2)]),
}


def student_model(kind="narrow"):
    """A MobileNetV3-style 1-D student (see `STUDENTS`)."""
    stem, blocks = STUDENTS[kind]
    inputs = keras.Input((40, 1), name="signal")
    x = keras.layers.Conv1D(stem, 5, padding="same", use_bias=False, name="stem")(inputs)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.Activation("hard_swish", name="stem_swish")(x)
    for i, (width, stride) in enumerate(blocks):
        name = f"block{i}"
        y = keras.layers.DepthwiseConv1D(5, strides=stride, padding="same", use_bias=False,
                                         name=f"{name}_dw")(x)
        y = keras.layers.BatchNormalization(name=f"{name}_dw_bn")(y)
        y = keras.layers.Activation("hard_swish", name=f"{name}_dw_swish")(y)
        y = keras.layers.Conv1D(width, 1, use_bias=False, name=f"{name}_project")(y)
        y = keras.layers.BatchNormalization(name=f"{name}_project_bn")(y)
        if stride == 1 and x.shape[-1] == width:
            x = keras.layers.Add(name=f"{name}_add")([x, y])
        else:
            x = keras.layers.Activation("hard_swish", name=f"{name}_swish")(y)
    x = keras.layers.GlobalAveragePooling1D(name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x), name=f"student_{kind}")


def ce():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def adam(learning_rate, epochs, samples):
    """Adam with cosine decay to 0 over the run: the last epoch is a settled model."""
    steps = epochs * -(-samples // BATCH)
    return keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(learning_rate, steps))


def fit_labels(model, x, y, epochs, learning_rate=3e-3):
    model.compile(optimizer=adam(learning_rate, epochs, len(x)), loss=ce())
    model.fit(x, y, batch_size=BATCH, epochs=epochs, verbose=0)
    return model


def distil(teacher, student, x, y, epochs, learning_rate=3e-3):
    distiller = keras_kd.Distiller(teacher, student, keras_kd.LogitsDistillation(TEMPERATURE),
                                   student_loss_weight=0.1)
    distiller.compile(optimizer=adam(learning_rate, epochs, len(x)), loss=ce())
    distiller.fit(x, y, batch_size=BATCH, epochs=epochs, verbose=0)
    return student


def keras_accuracy(model, x, y):
    return float(np.mean(model.predict(x, batch_size=256, verbose=0).argmax(-1) == y))


def int8_accuracy(model, folder, name, x_test, y_test, representative=None):
    report = keras_kd.export_student(
        model, os.path.join(folder, f"{name}.tflite"), quantization="int8",
        representative_data=representative, evaluation_data=(x_test, y_test))
    return report


def copy_of(model):
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def one_seed(seed, folder, kind):
    keras.utils.set_random_seed(seed)
    (x, y), (x_test, y_test) = datasets.mnist1d()
    teacher = fit_labels(teacher_model(), x, y, EPOCHS)
    row = {"teacher": keras_accuracy(teacher, x_test, y_test)}
    student = distil(teacher, student_model(kind), x, y, EPOCHS)
    row["float distilled"] = keras_accuracy(student, x_test, y_test)
    report = int8_accuracy(student, folder, f"ptq{seed}", x_test, y_test, x[:200])
    row["PTQ int8"] = report["accuracy_exported"]

    keras.utils.set_random_seed(seed)
    longer = distil(teacher, copy_of(student), x, y, FINE_TUNE_EPOCHS, 3e-4)
    row["float distilled, + fine-tune"] = keras_accuracy(longer, x_test, y_test)

    keras.utils.set_random_seed(seed)
    qat = fit_labels(keras_kd.quantization_aware(copy_of(student)), x, y,
                     FINE_TUNE_EPOCHS, 3e-4)
    report = int8_accuracy(qat, folder, f"qat{seed}", x_test, y_test)
    row["QAT int8, labels"] = report["accuracy_exported"]

    keras.utils.set_random_seed(seed)
    qad = distil(teacher, keras_kd.quantization_aware(copy_of(student)), x, y,
                 FINE_TUNE_EPOCHS, 3e-4)
    report = int8_accuracy(qad, folder, f"qad{seed}", x_test, y_test)
    row["QAD int8"] = report["accuracy_exported"]
    row["QAD parity"] = {key: report[key] for key in (
        "top1_agreement", "max_abs_difference_in_steps", "within_one_step", "float_operations")}
    return row


ROWS = ("teacher", "float distilled", "float distilled, + fine-tune", "PTQ int8",
        "QAT int8, labels", "QAD int8")


def table(rows):
    lines = ["| | " + " | ".join(f"seed {i}" for i in range(len(rows))) + " | mean |",
             "|---" * (len(rows) + 2) + "|"]
    for name in ROWS:
        values = [100 * r[name] for r in rows]
        lines.append(f"| {name} | " + " | ".join(f"{v:.1f}" for v in values)
                     + f" | {np.mean(values):.2f} |")
    qad = np.array([r["QAD int8"] for r in rows])
    gaps = {
        "QAD int8 - float distilled": 100 * (qad - [r["float distilled"] for r in rows]),
        "QAD int8 - PTQ int8": 100 * (qad - [r["PTQ int8"] for r in rows]),
        "QAD int8 - float distilled, + fine-tune": 100 * (
            qad - [r["float distilled, + fine-tune"] for r in rows]),
        "float distilled - PTQ int8": 100 * np.array(
            [r["float distilled"] - r["PTQ int8"] for r in rows]),
    }
    for name, values in gaps.items():
        lines.append(f"| {name} | " + " | ".join(f"{v:+.1f}" for v in values)
                     + f" | {np.mean(values):+.2f} |")
    return "\n".join(lines)


KINDS = tuple(STUDENTS)


def probe(folder, kinds, seeds):
    (x, y), (x_test, y_test) = datasets.mnist1d()
    for kind, seed in ((kind, seed) for kind in kinds for seed in range(seeds)):
        keras.utils.set_random_seed(seed)
        student = fit_labels(student_model(kind), x, y, EPOCHS)
        report = int8_accuracy(student, folder, f"probe_{kind}_{seed}", x_test, y_test, x[:200])
        say(f"{kind}, seed {seed}: float {100 * keras_accuracy(student, x_test, y_test):.1f}, "
            f"PTQ int8 {100 * report['accuracy_exported']:.1f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--student", choices=KINDS, default=STUDENT)
    parser.add_argument("--probe", nargs="*", choices=KINDS, default=None,
                        help="print float vs PTQ int8 of these students trained on labels")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        if args.probe is not None:
            probe(folder, args.probe or KINDS, args.seeds)
            return
        rows = []
        for seed in range(args.seeds):
            rows.append(one_seed(seed, folder, args.student))
            say(f"seed {seed}:", {k: (round(100 * v, 1) if isinstance(v, float) else v)
                                  for k, v in rows[-1].items()})
    text = table(rows)
    say(text)
    with open(os.path.join(os.path.dirname(__file__), "quantization_results.md"), "w") as f:
        f.write("# Int8 LiteRT accuracy on MNIST-1D (test split, %)\n\n"
                f"`python -m benchmarks.quantization --seeds {args.seeds} --student "
                f"{args.student}`: teacher and student "
                f"{EPOCHS} epochs, quantization-aware fine-tunes {FINE_TUNE_EPOCHS} epochs "
                f"(same steps), batch {BATCH}.\n\n" + text + "\n")


if __name__ == "__main__":
    sys.exit(main())
