"""Runs every benchmark side by side with keras.distillation; writes BENCHMARKS.md.

    python -m benchmarks.run_all [--output BENCHMARKS.md] [--repeats 7]
                                 [--accuracy-seeds 3] [--accuracy-epochs 300]

Takes about 10 minutes on 2 CPU cores; the accuracy table is read from the
accuracy benchmark's last results unless --rerun-accuracy (its two tables: an
hour or more),
the language-model table from `python -m benchmarks.lm`'s (about an hour; run
here only when its results file is missing).
"""

import argparse
import datetime
import os

from benchmarks import accuracy, cache, common, correctness, lm, step_time


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="BENCHMARKS.md")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--accuracy-seeds", type=int, default=3, help="seeds 0..N-1")
    parser.add_argument("--accuracy-epochs", type=int, default=300)
    parser.add_argument(
        "--rerun-accuracy", action="store_true",
        help=f"rerun the accuracy benchmark (an hour or more) instead of reading {accuracy.RESULTS}",
    )
    args = parser.parse_args()
    if args.rerun_accuracy or not os.path.exists(accuracy.RESULTS):
        accuracy.measure(args.accuracy_seeds, args.accuracy_epochs)
        accuracy_source = "measured now"
    else:
        accuracy_source = f"as last written to `{accuracy.RESULTS}` by `python -m benchmarks.accuracy`"

    with open(accuracy.RESULTS) as file:  # its sections one level down here
        accuracy_text = file.read().strip().replace("\n## ", "\n### ")

    if os.path.exists(lm.RESULTS):
        with open(lm.RESULTS) as file:
            lm_text = file.read().strip()
        lm_source = f"as last written to `{lm.RESULTS}` by `python -m benchmarks.lm`"
    else:
        lm_text = lm.measure(3)
        lm_source = "measured now"

    sections = [
        "# Benchmarks: keras_kd and keras.distillation side by side",
        f"Measured {datetime.date.today()} on {common.machine()}. "
        "Speed figures are medians of per-round ratios, the candidates run in "
        "interleaved rounds in one process; timings on this kind of machine "
        f"vary by about ±20%. Reproduce: `python -m benchmarks.run_all` "
        "(or each `python -m benchmarks.<name>`).",
        "## Correctness (`python -m benchmarks.correctness`)",
        correctness.table(correctness.run()),
        "## Step time (`python -m benchmarks.step_time`)",
        "Same teacher (3 conv layers of 128) and student (conv 96 with "
        "BatchNorm and Dropout, conv 128), batch 128, 60 steps per round, "
        f"{2 * args.repeats} rounds. *Ideal* is a plain student `fit` plus the "
        "teacher's forward passes on the same batches.",
        step_time.table(step_time.run(2 * args.repeats, 60)),
        "## Teacher-output cache (`python -m benchmarks.cache`)",
        cache.tables(cache.run(args.repeats, 10)),
        "## Accuracy on MNIST-1D (`python -m benchmarks.accuracy`)",
        f"Test accuracy of the student (teacher in the first row), {accuracy_source} "
        "(`python -m benchmarks.accuracy --seeds 3`):",
        accuracy_text,
        accuracy.FINDINGS,
        "## Language models: held-out bits per byte (`python -m benchmarks.lm`)",
        f"Byte-level GPT-2-style LMs (KerasHub) on the standard library's docstrings, {lm_source}:",
        lm_text,
    ]
    with open(args.output, "w") as file:
        file.write("\n\n".join(sections) + "\n")
    print(f"Wrote {args.output}")


if __name__ == "__main__":
    main()
