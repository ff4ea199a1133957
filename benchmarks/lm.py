"""Held-out bits per byte on the standard library's docstrings: labels alone
vs keras.distillation vs keras_kd (online, top-K cache, sequence-level,
on-policy), for GPT-2-style byte-level LMs.

    python -m benchmarks.lm [--seeds 3] [--rows ROW ...] [--runs FILE]

The data, tokenizer, models and recipes are keras_kd.app.demo_lm's (`keras-kd
demo lm`): docstrings of the top-level standard-library modules, split by
module (train / validation / test modules, see
keras_kd.app.datasets.stdlib_docstrings), cut into pieces of at most 128 bytes,
one token per byte; the teacher (demo_lm.teacher_model) trained on
next-token labels; the student (demo_lm.student_model) trained
`demo_lm.STUDENT_EPOCHS` epochs of 203 batches in every student row, so the
same number of optimizer steps. Every value is the model after its last
epoch (no early stopping, no checkpoint chosen on the test modules).

On seed 0, keras_kd's divergences are first compared on the validation
modules; the best is then trained on every seed. Nothing is chosen on the
test modules.

Each (seed, row) is trained in a fresh process, its result appended to
`--runs` (JSON lines) as soon as it is measured; each seed's teacher is kept
in `--work`: an interrupted run continues where it stopped, and rows can be
run by separate commands (`--rows`, `--seed`); the tables are always printed
from everything in `--runs`.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import keras
import tensorflow as tf

import keras_kd
from benchmarks import common
from keras_kd.app import demo_lm

RESULTS = "benchmarks/lm_results.md"
RUNS = "benchmarks/lm_runs.jsonl"
TEACHER = "teacher (labels)"
LABELS = "student, labels alone"
KERAS = "keras.distillation, KLDivergence(), T=1, student_loss_weight=0.5"
FORWARD_KL = "forward KL, T=1"
CANDIDATES = {
    FORWARD_KL: lambda: keras_kd.LogitsDistillation(temperature=1.0),
    "reverse KL, T=1": lambda: keras_kd.losses.ReverseKL(temperature=1.0),
    "generalized JSD (beta=0.5), T=1": lambda: keras_kd.losses.GeneralizedJSD(beta=0.5, temperature=1.0),
}
"""keras_kd's divergences compared on the validation modules (seed 0)."""
TOP_K = demo_lm.TOP_K
CACHES = [(None, "top")] + [(k, "top") for k in TOP_K] + [(k, "sampled") for k in demo_lm.SAMPLED_K]
"""The cache rows, `(K, top_k_method)`: the full logits (the other rows'
reference), the top-K, and K tokens drawn from the teacher."""
ON_POLICY_FRACTION = demo_lm.ON_POLICY_FRACTION


def kd_row(candidate):
    return f"keras_kd, {candidate}, student_loss_weight={demo_lm.STUDENT_LOSS_WEIGHT}"


def top_k_row(k, method="top"):
    cache = (f"top-{k} cache" if method == "top" else f"{k}-draw cache") if k else "full-logit cache (float32)"
    return f"keras_kd, {cache}, forward KL, T=1, student_loss_weight={demo_lm.STUDENT_LOSS_WEIGHT}"


SEQUENCE_LEVEL = "keras_kd, sequence-level (teacher's greedy continuations), forward KL"
ON_POLICY = f"keras_kd, on-policy (lambda={ON_POLICY_FRACTION}), forward KL"
ON_POLICY_REFERENCE = "keras_kd, prompt + given continuation (lambda=0), forward KL"


class Seed:
    """One seed's data and teacher; trains and scores the rows asked for."""

    def __init__(self, seed, splits, work, record, progress):
        self.seed, self.record, self.progress = seed, record, progress
        self.preprocess = demo_lm.preprocessor()
        train, validation, test = splits
        self.train_pieces = train
        self.train = demo_lm.batches(train, self.preprocess, seed=seed)
        self.held_out = {"validation": demo_lm.batches(validation, self.preprocess),
                         "test": demo_lm.batches(test, self.preprocess)}
        self.steps = demo_lm.STUDENT_EPOCHS * len(self.train)
        self.teacher = self._teacher(os.path.join(work, f"teacher_seed{seed}.keras"))

    def _teacher(self, path):
        if os.path.exists(path):
            return keras.models.load_model(path)
        start = time.perf_counter()
        teacher = demo_lm.train_on_labels(self.fresh(demo_lm.teacher_model), self.train,
                                          demo_lm.TEACHER_EPOCHS, verbose=0)
        self.score(TEACHER, teacher, time.perf_counter() - start)
        teacher.save(path)
        return teacher

    def fresh(self, builder):
        keras.utils.set_random_seed(self.seed)
        return builder()

    def score(self, row, model, seconds, **extra):
        scores = {name: demo_lm.bits_per_byte(model, data) for name, data in self.held_out.items()}
        self.record({"seed": self.seed, "row": row, **scores, "seconds": seconds, **extra})
        self.progress(f"seed {self.seed}, {row}: validation {scores['validation']:.4f}, "
                      f"test {scores['test']:.4f} bits per byte ({seconds:.0f} s)")

    def distil(self, row, data, loss=None, student=None, **extra):
        student = student or self.fresh(demo_lm.student_model)
        start = time.perf_counter()
        distiller = demo_lm.keras_kd_distiller(self.teacher, student, self.steps, loss)
        distiller.fit(data, epochs=demo_lm.STUDENT_EPOCHS, shuffle=False, verbose=0)
        self.score(row, student, time.perf_counter() - start, **extra)

    def run(self, row):
        start = time.perf_counter()
        if row == LABELS:
            student = demo_lm.train_on_labels(self.fresh(demo_lm.student_model), self.train,
                                              demo_lm.STUDENT_EPOCHS, verbose=0)
            self.score(row, student, time.perf_counter() - start)
        elif row == KERAS:
            student = self.fresh(demo_lm.student_model)
            demo_lm.keras_distiller(self.teacher, student, self.steps).fit(
                self.train, epochs=demo_lm.STUDENT_EPOCHS, shuffle=False, verbose=0)
            self.score(row, student, time.perf_counter() - start)
        elif row in map(kd_row, CANDIDATES):
            candidate = next(c for c in CANDIDATES if kd_row(c) == row)
            self.distil(row, self.train, CANDIDATES[candidate]())
        elif row in (top_k_row(*c) for c in CACHES):
            self.top_k(row, *next(c for c in CACHES if top_k_row(*c) == row))
        elif row == SEQUENCE_LEVEL:
            self.sequence_level()
        elif row in (ON_POLICY, ON_POLICY_REFERENCE):
            self.on_policy(row, ON_POLICY_FRACTION if row == ON_POLICY else 0.0)
        else:
            raise ValueError(f"Unknown row {row!r}; rows: {all_rows()}")

    def top_k(self, row, k, method):
        """The teacher's top-K cache (`k`; None: its full logits; `method`:
        `top_k_method`), built once in a folder; the student trained from it
        on the online rows' batches (`demo_lm.cache_batches`)."""
        with tempfile.TemporaryDirectory() as folder:
            tf.random.set_seed(None)  # self.train's shuffle was made before any global seed
            data, build, stored = demo_lm.cache_batches(
                self.teacher, self.train_pieces, self.preprocess, os.path.join(folder, "cache"),
                top_k=k, seed=self.seed, top_k_method=method)
            positions = len(self.train_pieces) * demo_lm.SEQUENCE_LENGTH
            self.distil(row, data, cache_seconds=build, cache_bytes=stored,
                        cache_bytes_per_position=stored / positions)

    def sequence_level(self):
        """Kim & Rush: the teacher's greedy continuations of the training prompts."""
        data, generation = demo_lm.sequence_level_data(self.teacher, self.train_pieces, self.preprocess,
                                                       self.seed)
        self.distil(SEQUENCE_LEVEL, data, generation_seconds=generation)

    def on_policy(self, row, fraction):
        """GKD: a fraction of each batch continued by the current student
        (sampling at temperature 1), the rest by the given text."""
        student = self.fresh(demo_lm.student_model)
        data = demo_lm.on_policy_data(student, self.train_pieces, self.preprocess, fraction, self.seed)
        self.distil(row, data, student=student)


def all_rows():
    return ([LABELS, KERAS] + [kd_row(c) for c in CANDIDATES] + [top_k_row(*c) for c in CACHES]
            + [SEQUENCE_LEVEL, ON_POLICY_REFERENCE, ON_POLICY])


def load_runs(path):
    if not os.path.exists(path):
        return []
    with open(path) as file:
        return [json.loads(line) for line in file if line.strip()]


def best_candidate(runs):
    """The divergence with the lowest validation bits per byte on seed 0."""
    scored = {c: r["validation"] for r in runs for c in CANDIDATES if r["seed"] == 0 and r["row"] == kd_row(c)}
    return min(scored, key=scored.get) if len(scored) == len(CANDIDATES) else None


def run(seeds, rows, runs_path, work, progress=print):
    """Measures every (seed, row) of `seeds` not yet in `runs_path`, each in
    a fresh process (`--one`); seed 0's divergence comparison decides which
    divergence the other seeds train.

    One process per measurement: rows trained one after another in one
    process gave different results from the same rows in fresh processes
    (seed 0, forward KL: 3.876 validation bits per byte as the third row of
    a process, 3.220 alone), so no row inherits another's process state.
    """
    os.makedirs(work, exist_ok=True)
    for seed in seeds:
        for row in [TEACHER] + list(rows):
            runs = load_runs(runs_path)
            best = best_candidate(runs)
            if (seed, row) in {(r["seed"], r["row"]) for r in runs} or (
                    seed != 0 and row in map(kd_row, CANDIDATES) and row not in (
                        kd_row(FORWARD_KL), kd_row(best))):
                continue
            subprocess.run([sys.executable, "-m", "benchmarks.lm", "--one", str(seed), row,
                            "--runs", runs_path, "--work", work], check=True)


def run_one(seed, row, runs_path, work, progress=print):
    """Trains and scores one (seed, row) in this process (the teacher: its own row)."""
    def record(result):
        with open(runs_path, "a") as file:
            file.write(json.dumps(result) + "\n")

    one = Seed(seed, demo_lm.load_splits(), work, record, progress)
    if row != TEACHER:
        one.run(row)


def table(runs):
    """The tables, from the recorded runs (rows with fewer seeds say so)."""
    by_row = {}
    for result in runs:
        by_row.setdefault(result["row"], {})[result["seed"]] = result
    if LABELS not in by_row:
        return "No results yet."
    labels = statistics.mean(r["test"] for r in by_row[LABELS].values())
    best = best_candidate(runs)

    def line(row, name=None):
        results = [by_row[row][s] for s in sorted(by_row[row])]
        tests = [r["test"] for r in results]
        mean = statistics.mean(tests)
        spread = f"{mean:.3f} ± {statistics.stdev(tests):.3f}" if len(tests) > 1 else f"{mean:.3f}"
        versus = "" if row == TEACHER else f"{100 * (mean / labels - 1):+.1f}%"
        return [name or row, len(results), f"{statistics.mean(r['validation'] for r in results):.3f}",
                spread, versus, " / ".join(f"{t:.3f}" for t in tests)]

    order = [TEACHER, LABELS, KERAS, kd_row(FORWARD_KL)]
    if best and best != FORWARD_KL:
        order.append(kd_row(best))
    order += [top_k_row(*c) for c in CACHES] + [SEQUENCE_LEVEL, ON_POLICY_REFERENCE, ON_POLICY]
    rows = [line(row, row + (" (best on validation)" if best and row == kd_row(best) else ""))
            for row in order if row in by_row]
    teacher, student = demo_lm.teacher_model(), demo_lm.student_model()
    text = (
        f"Teacher {teacher.count_params():,} weights, {demo_lm.TEACHER_EPOCHS} epochs; student "
        f"{student.count_params():,} weights, {demo_lm.STUDENT_EPOCHS} epochs of the same batches in "
        f"every student row; batch {demo_lm.BATCH_SIZE}, pieces of at most {demo_lm.SEQUENCE_LENGTH} bytes.\n\n"
        "Held-out bits per byte (lower is better) after the last epoch: validation modules (mean over "
        "seeds), test modules (mean ± std over seeds, each seed's value), and the test mean relative to "
        "the student from labels alone.\n\n"
        + common.markdown_table(["row", "seeds", "validation", "test", "test vs labels alone",
                                 "test, per seed"], rows)
    )
    comparison = [[c, f"{by_row[kd_row(c)][0]['validation']:.3f}"]
                  for c in CANDIDATES if 0 in by_row.get(kd_row(c), {})]
    if comparison:
        text += ("\n\nkeras_kd's divergences on the validation modules (seed 0, student_loss_weight="
                 f"{demo_lm.STUDENT_LOSS_WEIGHT}):\n\n"
                 + common.markdown_table(["distillation loss", "validation bits per byte"], comparison))
    costs = []
    for row in [top_k_row(*c) for c in CACHES]:
        for seed, r in sorted(by_row.get(row, {}).items()):
            costs.append([row.split(",")[1].strip(), seed, f"{r['cache_bytes'] / 2**20:.1f}",
                          f"{r['cache_bytes_per_position']:.0f}", f"{r['cache_seconds']:.0f}"])
    if costs:
        text += ("\n\nTeacher caches (TFRecord files on disk: token ids, labels, weights and the teacher's "
                 f"full logits in float32, 4 x 258 = 1,032 bytes per position for the logits alone, or K of its "
                 f"tokens (top or drawn); per position of the {demo_lm.SEQUENCE_LENGTH}-token rows):\n\n"
                 + common.markdown_table(["cache", "seed", "MiB", "bytes per position", "build s"], costs))
    seconds = [[row, f"{statistics.mean(r['seconds'] for r in by_row[row].values()):.0f}"]
               for row in order if row in by_row]
    text += ("\n\nWall time of each row's training (mean over seeds, seconds; the machine was shared, "
             "so these are indications, not measurements):\n\n"
             + common.markdown_table(["row", "seconds"], seconds))
    return text


def measure(seeds, runs_path=RUNS, work=None):
    """Runs every row on seeds 0..`seeds`-1 (what is not in `runs_path` yet);
    returns the tables' text."""
    run(range(seeds), all_rows(), runs_path, work or os.path.join(tempfile.gettempdir(), "keras_kd_lm_benchmark"))
    return f"{common.machine()}\n{table(load_runs(runs_path))}"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0, 1, ... N-1")
    parser.add_argument("--seed", type=int, action="append", help="only this seed (repeatable)")
    parser.add_argument("--rows", nargs="+", default=None, help="rows to measure (default: all)")
    parser.add_argument("--runs", default=RUNS, help="JSON lines of every measured (seed, row)")
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "keras_kd_lm_benchmark"),
                        help="folder for each seed's teacher")
    parser.add_argument("--output", default=RESULTS, help="also write the tables here")
    parser.add_argument("--table-only", action="store_true", help="print the tables of --runs")
    parser.add_argument("--one", nargs=2, metavar=("SEED", "ROW"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        run_one(int(args.one[0]), args.one[1], args.runs, args.work)
        sys.exit(0)
    if not args.table_only:
        run(args.seed or range(args.seeds), args.rows or all_rows(), args.runs, args.work)
    text = f"{common.machine()}\n{table(load_runs(args.runs))}"
    print(text)
    with open(args.output, "w") as file:
        file.write(text + "\n")
