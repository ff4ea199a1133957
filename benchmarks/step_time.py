"""Training-step time of keras_kd vs keras.distillation, side by side.

    python -m benchmarks.step_time [--repeats 7] [--steps 30]

Same teacher, student and batches; logits only, and logits plus one feature
pair of equal shapes (so keras.distillation can run it too). Also the ideal
step: a plain student `fit` step plus a teacher forward pass (all batches'
forwards in one compiled function, so it carries no per-call overhead). Rounds are
interleaved in one process; the table gives medians of per-round ratios.
"""

import argparse

import keras
import tensorflow as tf

import keras_kd
from benchmarks import common


def models():
    keras.utils.set_random_seed(0)
    teacher = common.conv_net([128, 128, 128], "teacher")
    # Large enough for compute to dominate; BatchNorm and Dropout as usual.
    student = common.conv_net([96, 128], "student", regularized=True)
    return teacher, student


def make(library, with_feature):
    teacher, student = models()
    kd = keras_kd if library == "keras_kd" else keras.distillation
    losses = [kd.LogitsDistillation(temperature=4.0, loss=keras.losses.KLDivergence())]
    if with_feature:
        losses.append(kd.FeatureDistillation(loss="mse", teacher_layer_name="feature",
                                             student_layer_name="feature"))
    distiller = kd.Distiller(teacher=teacher, student=student, distillation_losses=losses,
                             student_loss_weight=0.5)
    distiller.compile(optimizer="adam",
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return distiller


def ideal():
    """The parts of the ideal step: a student to `fit`, a teacher to run."""
    teacher, student = models()
    student.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return student, teacher


def run(repeats, steps):
    data = common.batches(steps)
    x_only = data.map(lambda x, y: x)
    runners, results = {}, {}
    for feature in (False, True):
        for library in ("keras_kd", "keras.distillation"):
            distiller = make(library, feature)
            distiller.fit(data, epochs=1, verbose=0)  # trace and warm up
            runners[(library, feature)] = (
                lambda d=distiller: common.timed(lambda: d.fit(data, epochs=1, verbose=0)))
    student, teacher = ideal()

    @tf.function
    def teacher_forwards():
        for x in x_only:
            teacher(x, training=False)

    student.fit(data, epochs=1, verbose=0)
    teacher_forwards()
    runners[("ideal", None)] = lambda: common.timed(
        lambda: (student.fit(data, epochs=1, verbose=0), teacher_forwards()))
    times = common.interleaved(runners, repeats)
    for feature in (False, True):
        ours, theirs = times[("keras_kd", feature)], times[("keras.distillation", feature)]
        results[feature] = {
            "keras_kd_ms": 1000 * sorted(ours)[len(ours) // 2] / steps,
            "keras_ms": 1000 * sorted(theirs)[len(theirs) // 2] / steps,
            "ratio": common.median_ratio(ours, theirs),
            "ratio_to_ideal": common.median_ratio(ours, times[("ideal", None)]),
            "keras_ratio_to_ideal": common.median_ratio(theirs, times[("ideal", None)]),
        }
    results["ideal_ms"] = 1000 * sorted(times[("ideal", None)])[repeats // 2] / steps
    return results


def table(results):
    rows = []
    for feature, label in ((False, "logits only"), (True, "logits + 1 feature pair")):
        r = results[feature]
        rows.append([label, f"{r['keras_kd_ms']:.1f}", f"{r['keras_ms']:.1f}", f"{r['ratio']:.2f}x",
                     f"{r['ratio_to_ideal']:.2f}x", f"{r['keras_ratio_to_ideal']:.2f}x"])
    return common.markdown_table(
        ["step", "keras_kd ms/step", "keras.distillation ms/step", "keras_kd / keras",
         "keras_kd / ideal", "keras.distillation / ideal"], rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    print(common.machine())
    print(table(run(args.repeats, args.steps)))
