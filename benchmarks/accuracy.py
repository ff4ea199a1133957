"""Accuracy on MNIST-1D: labels alone vs keras.distillation vs keras_kd.

    python -m benchmarks.accuracy [--seeds 0 1 2] [--epochs 300]

MNIST-1D generated locally (4000 train / 1000 test); 400 training samples are
held out as the validation split, so every row trains on the same 3600. The
demo's teacher (trained on labels with random shifts and CutMix) and
student, the same epoch budget, batch size and optimizer (Adam, cosine decay)
for every row. Nothing here is tuned on the test split; the recipe is
fixed in keras_kd.demo.

The last row is a yardstick, not a contender: the same student trained on
labels alone from 40,000 freshly generated MNIST-1D samples (11x the data,
no augmentation) for the same number of optimizer steps, i.e. roughly the
most this student reaches from labels.
"""

import argparse
import statistics

import keras

import keras_kd
from benchmarks import common
from keras_kd import augment, datasets, demo

RESULTS = "benchmarks/accuracy_results.md"
ROWS = [
    "teacher (labels, shift + CutMix)",
    "student, labels alone",
    "student, labels + mixup",
    "student, labels + shift + CutMix (the recipe's augmentation)",
    "keras.distillation, KLDivergence(), T=4, student_loss_weight=0.5",
    "keras_kd LogitsDistillation, T=4, student_loss_weight=0.5",
    "keras_kd recipe: consistent shift + CutMix, T=1, teacher only",
    "yardstick: student, labels alone, 40,000 fresh samples, same steps",
]
YARDSTICK_SAMPLES = 50_000  # 80% of them train


def yardstick(seed, epochs, samples):
    """The student from labels alone on 11x fresh data, for as many steps as
    `epochs` over `samples`."""
    (x, y), _ = datasets.mnist1d(seed=1000 + seed, samples=YARDSTICK_SAMPLES)
    steps = epochs * -(-samples // demo.BATCH_SIZE)
    big_epochs = max(1, round(steps / -(-len(x) // demo.BATCH_SIZE)))
    keras.utils.set_random_seed(seed)
    return demo.train_on_labels(demo.student_model(), x, y, big_epochs, None, seed, verbose=0)


def logit_kd(library, teacher, epochs, x, y):
    kd = keras_kd if library == "keras_kd" else keras.distillation
    student = demo.student_model()
    distiller = kd.Distiller(teacher=teacher, student=student,
                             distillation_losses=kd.LogitsDistillation(4.0, loss=keras.losses.KLDivergence()),
                             student_loss_weight=0.5)
    distiller.compile(optimizer=demo.optimizer(epochs, len(x)), loss=demo.hard_label_loss())
    distiller.fit(x, y, batch_size=demo.BATCH_SIZE, epochs=epochs, verbose=0)
    return student


def one_seed(seed, epochs):
    (x, y), (x_test, y_test) = datasets.mnist1d()
    (x, y), (x_val, y_val) = datasets.split_validation(x, y, fraction=0.1, seed=seed)

    def fresh(builder):
        keras.utils.set_random_seed(seed)
        return builder()

    def on_labels(builder, augmentation):
        return demo.train_on_labels(fresh(builder), x, y, epochs, augmentation, seed, verbose=0)

    models = {}
    models[ROWS[0]] = teacher = on_labels(demo.teacher_model, demo.recipe_augmentation(seed))
    models[ROWS[1]] = on_labels(demo.student_model, None)
    models[ROWS[2]] = on_labels(demo.student_model, augment.Mixup(seed=seed))
    models[ROWS[3]] = on_labels(demo.student_model, demo.recipe_augmentation(seed))
    keras.utils.set_random_seed(seed)
    models[ROWS[4]] = logit_kd("keras.distillation", teacher, epochs, x, y)
    keras.utils.set_random_seed(seed)
    models[ROWS[5]] = logit_kd("keras_kd", teacher, epochs, x, y)
    student = fresh(demo.student_model)
    demo.distiller_recipe(teacher, student, epochs, len(x), seed).fit(
        x, y, batch_size=demo.BATCH_SIZE, epochs=epochs, verbose=0)
    models[ROWS[6]] = student
    models[ROWS[7]] = yardstick(seed, epochs, len(x))
    return {row: (demo.accuracy(m, x_val, y_val), demo.accuracy(m, x_test, y_test))
            for row, m in models.items()}


def run(seeds, epochs, progress=print):
    results = []
    for seed in seeds:
        results.append(one_seed(seed, epochs))
        progress(f"seed {seed}: " + ", ".join(f"{100 * t:.1f}" for _, t in results[-1].values()))
    return results


def table(results, epochs):
    rows = []
    for row in ROWS:
        val = [r[row][0] for r in results]
        test = [r[row][1] for r in results]
        rows.append([row, f"{100 * statistics.mean(val):.1f}",
                     f"{100 * statistics.mean(test):.1f}",
                     f"{100 * min(test):.1f}-{100 * max(test):.1f}"])
    params = f"teacher {demo.teacher_model().count_params():,} weights, student {demo.student_model().count_params():,}"
    return (f"{len(results)} seeds, {epochs} epochs each, batch {demo.BATCH_SIZE}; {params}\n\n"
            + common.markdown_table(["row", "validation %", "test % (mean)", "test % (range)"], rows))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--output", default=RESULTS, help="also write the table here")
    args = parser.parse_args()
    text = f"{common.machine()}\n{table(run(args.seeds, args.epochs), args.epochs)}"
    print(text)
    with open(args.output, "w") as file:
        file.write(text + "\n")
