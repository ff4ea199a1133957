"""Held-out bits per byte on the standard library's docstrings: labels alone
vs keras.distillation vs keras_kd, for GPT-2-style byte-level LMs.

    python -m benchmarks.lm [--seeds 3]

The data, tokenizer, models and recipes are keras_kd.demo_lm's (`keras-kd
demo lm`): docstrings of the top-level standard-library modules, split by
module (train / validation / test modules, see
keras_kd.datasets.stdlib_docstrings), cut into pieces of at most 128 bytes,
one token per byte; a 2-layer teacher (964k weights) trained 4 epochs on
next-token labels; a 2-layer student (212k weights) trained 3 epochs in
every student row, on the same batches, so the same number of optimizer
steps. Every value is the model after its last epoch (no early stopping, no
checkpoint chosen on the test modules).

First, on seed 0, keras_kd's divergences are compared on the validation
modules (forward KL, reverse KL, generalized JSD with beta=0.5, at T=1
only, to keep the run short; its length is not measured yet); the best is
then trained on every seed. Nothing is chosen on the test modules.
"""

import argparse
import statistics
import time

import keras

import keras_kd
from benchmarks import common
from keras_kd import demo_lm

RESULTS = "benchmarks/lm_results.md"
TEACHER_ROW = "teacher (labels)"
LABELS_ROW = "student, labels alone"
KERAS_ROW = "keras.distillation, KLDivergence(), T=1, student_loss_weight=0.5"
FORWARD_KL = "forward KL, T=1"
CANDIDATES = {
    FORWARD_KL: lambda: keras_kd.LogitsDistillation(temperature=1.0),
    "reverse KL, T=1": lambda: keras_kd.losses.ReverseKL(temperature=1.0),
    "generalized JSD (beta=0.5), T=1": lambda: keras_kd.losses.GeneralizedJSD(beta=0.5, temperature=1.0),
}
"""keras_kd's distillation losses compared on the validation modules, each
with student_loss_weight=0.5 (demo_lm.STUDENT_LOSS_WEIGHT)."""


def kd_row(candidate):
    return f"keras_kd, {candidate}, student_loss_weight=0.5"


class Seed:
    """One seed's data, teacher and scores: trains and scores rows on demand."""

    def __init__(self, seed, splits, progress):
        self.seed = seed
        self.progress = progress
        preprocess = demo_lm.preprocessor()
        train, validation, test = splits
        self.train = demo_lm.batches(train, preprocess, seed=seed)
        self.held_out = {"validation": demo_lm.batches(validation, preprocess),
                         "test": demo_lm.batches(test, preprocess)}
        self.steps = demo_lm.STUDENT_EPOCHS * len(self.train)
        self.scores = {}
        self.teacher = self.score(TEACHER_ROW, lambda: demo_lm.train_on_labels(
            self.fresh(demo_lm.teacher_model), self.train, demo_lm.TEACHER_EPOCHS, verbose=0))

    def fresh(self, builder):
        keras.utils.set_random_seed(self.seed)
        return builder()

    def score(self, row, train):
        """Trains a model with `train()`, records its bits per byte; returns it."""
        start = time.perf_counter()
        model = train()
        seconds = time.perf_counter() - start
        self.scores[row] = {name: demo_lm.bits_per_byte(model, data) for name, data in self.held_out.items()}
        self.progress(f"seed {self.seed}, {row}: validation {self.scores[row]['validation']:.4f}, "
                      f"test {self.scores[row]['test']:.4f} bits per byte ({seconds:.0f} s)")
        return model

    def labels_alone(self):
        self.score(LABELS_ROW, lambda: demo_lm.train_on_labels(
            self.fresh(demo_lm.student_model), self.train, demo_lm.STUDENT_EPOCHS, verbose=0))

    def distilled(self, row, make_distiller):
        def train():
            student = self.fresh(demo_lm.student_model)
            make_distiller(student).fit(self.train, epochs=demo_lm.STUDENT_EPOCHS, shuffle=False, verbose=0)
            return student

        self.score(row, train)

    def keras_distillation(self):
        self.distilled(KERAS_ROW, lambda student: demo_lm.keras_distiller(self.teacher, student, self.steps))

    def keras_kd(self, candidate):
        self.distilled(kd_row(candidate), lambda student: demo_lm.keras_kd_distiller(
            self.teacher, student, self.steps, CANDIDATES[candidate]()))


def run(seeds, progress=print):
    """Seed 0 first, with the divergence comparison; then the other seeds.

    Returns:
        `(best, results)`: the candidate chosen on validation, and one
        `{row: {"validation": bits, "test": bits}}` per seed.
    """
    splits = demo_lm.load_splits()
    results = []
    best = None
    for seed in range(seeds):
        one = Seed(seed, splits, progress)
        one.labels_alone()
        one.keras_distillation()
        for candidate in CANDIDATES if best is None else dict.fromkeys([FORWARD_KL, best]):
            one.keras_kd(candidate)
        if best is None:
            best = min(CANDIDATES, key=lambda c: one.scores[kd_row(c)]["validation"])
            progress(f"best on the validation modules: {best}")
        results.append(one.scores)
    return best, results


def table(best, results, seconds):
    def spread(row, split):
        values = [r[row][split] for r in results]
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return statistics.mean(values), std, values

    labels, _, _ = spread(LABELS_ROW, "test")
    rows = []
    for row in [TEACHER_ROW, LABELS_ROW, KERAS_ROW, kd_row(FORWARD_KL)] + (
            [kd_row(best) + " (best on validation)"] if best != FORWARD_KL else []):
        name = row.removesuffix(" (best on validation)")
        validation, _, _ = spread(name, "validation")
        mean, std, values = spread(name, "test")
        versus = "" if row == TEACHER_ROW else f"{100 * (mean / labels - 1):+.1f}%"
        rows.append([row, f"{validation:.3f}", f"{mean:.3f} ± {std:.3f}", versus,
                     " / ".join(f"{v:.3f}" for v in values)])
    comparison = [[candidate, f"{results[0][kd_row(candidate)]['validation']:.3f}"]
                  for candidate in CANDIDATES]
    teacher, student = demo_lm.teacher_model(), demo_lm.student_model()
    return (
        f"{len(results)} seeds; teacher {teacher.count_params():,} weights, {demo_lm.TEACHER_EPOCHS} epochs; "
        f"student {student.count_params():,} weights, {demo_lm.STUDENT_EPOCHS} epochs in every student row; "
        f"batch {demo_lm.BATCH_SIZE}, pieces of at most {demo_lm.SEQUENCE_LENGTH} bytes; "
        f"{seconds / 60:.0f} min wall.\n\n"
        "Held-out bits per byte (lower is better) of each model after its last epoch: validation "
        "modules (mean), test modules (mean ± std over seeds, then each seed's value), and the test "
        "mean relative to the student from labels alone.\n\n"
        + common.markdown_table(["row", "validation", "test", "test vs labels alone", "test, per seed"], rows)
        + "\n\nkeras_kd's divergences on the validation modules (seed 0, student_loss_weight=0.5); "
        f"the lowest, {best}, is the last row above.\n\n"
        + common.markdown_table(["distillation loss", "validation bits per byte"], comparison)
    )


def measure(seeds):
    """Runs the benchmark; returns its text: machine, tables, wall time."""
    start = time.perf_counter()
    best, results = run(seeds)
    return f"{common.machine()}\n{table(best, results, time.perf_counter() - start)}"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0, 1, ... N-1")
    parser.add_argument("--output", default=RESULTS, help="also write the tables here")
    args = parser.parse_args()
    text = measure(args.seeds)
    print(text)
    with open(args.output, "w") as file:
        file.write(text + "\n")
