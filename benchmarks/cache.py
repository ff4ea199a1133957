"""Teacher-output cache: epoch time and end-to-end distillation time.

    python -m benchmarks.cache [--repeats 5] [--epochs 10]

MNIST-1D (4000 samples), batch 64.
1. Epoch time of `Distiller.fit` on the cache vs a plain `student.fit` on
   labels (the floor): interleaved rounds, median ratio; for the demo's
   models (a 3.0k-weight student: per-step overhead dominates) and for the
   step-time benchmark's larger models (compute dominates).
2. End-to-end time of an N-epoch distillation of the demo's models:
   keras_kd without the cache, keras_kd with it (building the cache
   included), and keras.distillation (correctly configured:
   `loss=keras.losses.KLDivergence()`), same models.
"""

import argparse

import keras
import tensorflow as tf

import keras_kd
from benchmarks import common
from keras_kd.app import datasets, demo

BATCH = 64


def data():
    (x, y), _ = datasets.mnist1d()
    return x, y, tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH).cache()


MODELS = {
    "demo models": (demo.teacher_model, demo.student_model),
    "larger models": (lambda: common.conv_net([128, 128, 128], "teacher"),
                      lambda: common.conv_net([96, 128], "student", regularized=True)),
}


def trained_teacher(x, y, kind="demo models"):
    keras.utils.set_random_seed(0)
    teacher = MODELS[kind][0]()
    teacher.compile("adam", demo.hard_label_loss())
    teacher.fit(x, y, batch_size=BATCH, epochs=2, verbose=0)
    return teacher


def distiller(library, teacher, kind="demo models"):
    kd = keras_kd if library == "keras_kd" else keras.distillation
    d = kd.Distiller(teacher=teacher, student=MODELS[kind][1](),
                     distillation_losses=kd.LogitsDistillation(4.0, loss=keras.losses.KLDivergence()),
                     student_loss_weight=0.1)
    d.compile(optimizer="adam", loss=demo.hard_label_loss())
    return d


def epoch_times(teacher, dataset, repeats, kind):
    on_cache = distiller("keras_kd", teacher, kind)
    cached = keras_kd.cache_teacher_outputs(on_cache, dataset, seed=0)
    student = MODELS[kind][1]()
    student.compile("adam", demo.hard_label_loss())
    uncached = distiller("keras_kd", teacher, kind)
    on_cache.fit(cached, epochs=1, verbose=0)
    student.fit(dataset.shuffle(4000), epochs=1, verbose=0)
    uncached.fit(dataset.shuffle(4000), epochs=1, verbose=0)
    return common.interleaved({
        "cache": lambda: common.timed(lambda: on_cache.fit(cached, epochs=1, verbose=0)),
        "student": lambda: common.timed(lambda: student.fit(dataset.shuffle(4000), epochs=1, verbose=0)),
        "no cache": lambda: common.timed(lambda: uncached.fit(dataset.shuffle(4000), epochs=1, verbose=0)),
    }, repeats)


def end_to_end(teacher, dataset, epochs, repeats):
    def ours_without():
        return common.timed(lambda: distiller("keras_kd", teacher).fit(
            dataset.shuffle(4000), epochs=epochs, verbose=0))

    def ours_with():
        def run():
            d = distiller("keras_kd", teacher)
            d.fit(keras_kd.cache_teacher_outputs(d, dataset), epochs=epochs, verbose=0)
        return common.timed(run)

    def keras_reference():
        return common.timed(lambda: distiller("keras", teacher).fit(
            dataset.shuffle(4000), epochs=epochs, verbose=0))

    return common.interleaved({
        "keras_kd, cache": ours_with,
        "keras_kd, no cache": ours_without,
        "keras.distillation": keras_reference,
    }, repeats)


def run(repeats, epochs):
    x, y, dataset = data()
    epochs_by_kind = {
        kind: epoch_times(trained_teacher(x, y, kind), dataset, repeats, kind) for kind in MODELS
    }
    return epochs_by_kind, end_to_end(trained_teacher(x, y), dataset, epochs, repeats), epochs


def tables(results):
    epochs_by_kind, e2e, epochs = results
    median = lambda values: sorted(values)[len(values) // 2]  # noqa: E731
    first = common.markdown_table(
        ["models", "epoch of", "seconds (median)", "ratio to plain student fit (median)"],
        [[kind, name, f"{median(t[key]):.2f}", f"{common.median_ratio(t[key], t['student']):.2f}x"]
         for kind, t in epochs_by_kind.items()
         for name, key in (("Distiller.fit on the cache", "cache"),
                           ("Distiller.fit, teacher run each step", "no cache"),
                           ("student.fit on labels", "student"))])
    second = common.markdown_table(
        [f"{epochs}-epoch distillation", "seconds (median)", "ratio to keras.distillation (median)"],
        [[name, f"{median(times):.1f}", f"{common.median_ratio(times, e2e['keras.distillation']):.2f}x"]
         for name, times in e2e.items()])
    return first + "\n\n" + second


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    print(common.machine())
    print(tables(run(args.repeats, args.epochs)))
