"""What on-policy distillation costs per step, against token-level KD on the
same batches.

    python -m benchmarks.on_policy_cost [--rounds 5] [--batches 8]

The demo's LM teacher and student (keras_kd.app.demo_lm, untrained: the cost
does not depend on the weights, since every continuation is generated to
the full sequence length), `--batches` batches of 32 training pieces, each
split into a 32-byte prompt and its continuation
(`demo_lm.prompts_and_continuations`). One epoch of `Distiller.fit` over
`lm.OnPolicyBatches` with lambda = 0.5 (half of each batch continued by the
student) and with lambda = 0 (the given continuations: plain token-level
KD), in interleaved rounds in one process after a warm-up epoch of each
(the traces); the median of the per-round ratios.
"""

import argparse
import statistics

import keras

import keras_kd
from benchmarks import common
from keras_kd import lm
from keras_kd.app import demo_lm

FRACTIONS = (0.0, 0.5)


def measure(rounds, batches):
    train, _, _ = demo_lm.load_splits()
    prompts, continuations = demo_lm.prompts_and_continuations(train[: batches * demo_lm.BATCH_SIZE])
    preprocess = demo_lm.preprocessor()
    keras.utils.set_random_seed(0)
    teacher, student = demo_lm.teacher_model(), demo_lm.student_model()
    fits = {}
    for fraction in FRACTIONS:
        data = lm.OnPolicyBatches(student, prompts, continuations, preprocess, fraction=fraction,
                                  batch_size=demo_lm.BATCH_SIZE, stop_token_ids=None)
        distiller = demo_lm.keras_kd_distiller(teacher, student, steps=10 * batches,
                                               loss=keras_kd.LogitsDistillation(temperature=1.0))

        def fit(distiller=distiller, data=data):
            distiller.fit(data, epochs=1, verbose=0)

        fit()  # warm-up: traces the train step and the student's generate function
        fits[f"lambda={fraction}"] = lambda fit=fit: common.timed(fit) / batches
    return common.interleaved(fits, repeats=rounds, alternate=True)


def table(times, rounds, batches):
    base, on_policy = (times[f"lambda={f}"] for f in FRACTIONS)
    rows = [[name, f"{1000 * statistics.median(t):.0f}", " / ".join(f"{1000 * s:.0f}" for s in t)]
            for name, t in times.items()]
    return (f"{rounds} interleaved rounds of {batches} batches of {demo_lm.BATCH_SIZE} pieces (prompt "
            f"{demo_lm.PROMPT_BYTES} bytes, sequence {demo_lm.SEQUENCE_LENGTH} tokens)\n\n"
            + common.markdown_table(["OnPolicyBatches", "ms per step (median)", "ms per step, each round"], rows)
            + f"\n\nOn-policy (lambda={FRACTIONS[1]}) / token-level KD (lambda=0): "
            f"{common.median_ratio(on_policy, base):.2f}x per step (median of per-round ratios)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=8)
    args = parser.parse_args()
    times = measure(args.rounds, args.batches)
    print(f"{common.machine()}\n{table(times, args.rounds, args.batches)}")
