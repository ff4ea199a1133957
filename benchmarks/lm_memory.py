"""Memory and speed of one language-model distillation step, one process per measurement.

    python -m benchmarks.lm_memory [--rounds 3] [--steps 20] [--vocabulary 32000 --sequence 128]
    python -m benchmarks.lm_memory --one KIND [--steps 20] [--count-tensors]

Vocabulary 32,000, sequence 128, batch 4: a GPT-2 teacher (hidden 128, 2
layers) and student (hidden 64, 1 layer), built from constructor arguments
(KerasHub, random weights: memory and time do not depend on the values), on
right-padded `(x, y, sample_weight)` batches as KerasHub preprocessors yield.
Kinds (`KINDS`): the student's own `fit`; keras_kd (forward KL at T=2) with
the hard-label loss at weight 0.5 and at 0 (teacher only); keras_kd at T=1
with the hard labels at 0.5 (the LM recipe of `keras-kd demo lm`); and
keras.distillation (correctly configured: `loss=keras.losses.KLDivergence()`,
T=2). The keras_kd kinds run the usual step (`fused_head=False`, the logits
materialized); each has a `_fused` twin that runs the fused output head
(`fused_head=True`, the default: no (B,S,V) logits). `--vocabulary` and
`--sequence` change the sizes (e.g. 256,000 and 512); `--chunk-elements`
the fused head's logits per chunk (`keras_kd.losses._fused_head.CHUNK_ELEMENTS`).

What is measured, in a fresh process per kind and round (`--one`), with
TensorFlow's default settings (oneDNN on):

- *Peak RSS growth*: resident memory (`VmRSS` of /proc/self/status) once the
  models are built and compiled, just before the first step, against the
  kernel's high-water mark (`VmHWM`, reset to the current RSS at that moment
  by writing `5` to /proc/self/clear_refs) after the warm-up step (the trace)
  and N more steps: the memory `fit` adds to a process holding the models.
  The warm-up step is inside the window on purpose: TensorFlow's oneDNN CPU
  allocator keeps the pool a step grows to, so measured from after the
  warm-up step, RSS growth reads ~0 for every kind.
- *Step working memory*: TensorFlow's own count of the bytes its CPU
  allocator holds (`tf.config.experimental.get_memory_info("CPU:0")`): the
  peak over the N steps after the warm-up (statistics reset after it) minus
  what it held at that reset (weights, optimizer state). This is the step's
  tensors alone, without the trace or Python.
- *Step time*: the median over the N steps of the time from Keras's
  `on_train_batch_begin` to `on_train_batch_end` (one compiled train step).
- *(B,S,V)-sized tensors*: `model.train_step` traced by `tf.function` on the
  benchmark's batch (the body that `make_train_function` compiles, less the
  default strategy's `run` wrapper); every operation output in that graph
  with B*S*V elements is counted (any shape, e.g. (B*S, V) too, and any
  dtype), by operation type, including the operations of the functions the
  graph calls (`tf.cond` branches: only one of the two runs in a step).
  Views (`Reshape`, `Identity`, `ExpandDims`, `Squeeze`) share their
  input's buffer and are counted apart.

The driver runs the kinds in interleaved rounds (the order reversed every
other round), each measurement in its own process, and gives medians of the
per-round ratios. Prints a markdown table and writes `RESULTS`.
"""

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from benchmarks import common

RESULTS = os.path.join(os.path.dirname(__file__), "lm_memory_results.md")
VOCABULARY, SEQUENCE, BATCH = 32_000, 128, 4
CHUNK_ELEMENTS = None  # the fused head's default
TEACHER = {"num_layers": 2, "num_heads": 2, "hidden_dim": 128, "intermediate_dim": 512}
STUDENT = {"num_layers": 1, "num_heads": 2, "hidden_dim": 64, "intermediate_dim": 256}
KINDS = ("student_fit", "keras_kd", "keras_kd_t1", "keras_kd_teacher_only", "keras_distillation",
         "keras_kd_fused", "keras_kd_t1_fused", "keras_kd_teacher_only_fused")
VIEWS = ("Reshape", "Identity", "ExpandDims", "Squeeze")


def language_model(sizes, name):
    """A GPT-2 causal LM (no preprocessor) of the benchmark's vocabulary and length."""
    import keras_hub

    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=VOCABULARY, max_sequence_length=SEQUENCE, name=f"{name}_backbone", **sizes)
    return keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None, name=name)


def batches(count, seed=0):
    """`count` right-padded `(x, y, sample_weight)` batches, as KerasHub preprocessors give."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, VOCABULARY, (count * BATCH, SEQUENCE + 1)).astype("int32")
    lengths = rng.integers(SEQUENCE // 2, SEQUENCE + 1, count * BATCH)
    mask = (np.arange(SEQUENCE) < lengths[:, None]).astype("int32")
    x = {"token_ids": tokens[:, :-1] * mask, "padding_mask": mask}
    y = tokens[:, 1:] * mask
    return tf.data.Dataset.from_tensor_slices((x, y, mask)).batch(BATCH).cache()


def build(kind):
    """The model `fit` runs for a kind, compiled with Adam and sparse cross-entropy."""
    import keras_kd

    keras.utils.set_random_seed(0)
    student = language_model(STUDENT, "student")
    if kind == "student_fit":
        model = student
    else:
        teacher = language_model(TEACHER, "teacher")
        if kind == "keras_distillation":
            model = keras.distillation.Distiller(
                teacher, student,
                keras.distillation.LogitsDistillation(temperature=2.0, loss=keras.losses.KLDivergence()),
                student_loss_weight=0.5)
        else:
            fused = kind.endswith("_fused")
            kind = kind.removesuffix("_fused")
            model = keras_kd.Distiller(
                teacher, student, keras_kd.LogitsDistillation(temperature=1.0 if kind == "keras_kd_t1" else 2.0),
                student_loss_weight=0.0 if kind == "keras_kd_teacher_only" else 0.5, fused_head=fused)
    model.compile(optimizer="adam",
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  weighted_metrics=[])
    return model


def _status(field):
    """A `kB` field of /proc/self/status, in bytes."""
    with open("/proc/self/status") as file:
        for line in file:
            if line.startswith(field + ":"):
                return 1024 * int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} (Linux only)")


class StepMeter(keras.callbacks.Callback):
    """Step times after the warm-up step, and memory: see the module's docstring."""

    def __init__(self):
        super().__init__()
        self.seconds, self.start = [], None
        self.rss_before = self.rss_peak = self.tf_resting = self.tf_peak = None

    def on_train_begin(self, logs=None):
        self.rss_before = _status("VmRSS")
        with open("/proc/self/clear_refs", "w") as file:
            file.write("5")  # resets VmHWM to the current RSS

    def on_train_batch_begin(self, batch, logs=None):
        self.start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if batch == 0:  # the warm-up step, traced
            tf.config.experimental.reset_memory_stats("CPU:0")
            self.tf_resting = tf.config.experimental.get_memory_info("CPU:0")["current"]
        else:
            self.seconds.append(time.perf_counter() - self.start)

    def on_train_end(self, logs=None):
        self.rss_peak = _status("VmHWM")
        self.tf_peak = tf.config.experimental.get_memory_info("CPU:0")["peak"]


def full_size_tensors(model, data):
    """`{operation type: count}` of the train step's outputs with B*S*V elements.

    Operations inside functions the graph calls (the branches of a
    `tf.cond`, loop bodies) are counted too, keyed `"<attribute>:<type>"`,
    e.g. `"then_branch:SparseSoftmaxCrossEntropyWithLogits"`: only one
    branch of each conditional runs in a step. A branch's inputs
    (`Placeholder`) are the caller's tensors and are not counted again.
    """
    spec = keras.tree.map_structure(  # the batch's static shapes, not the dataset's (None, ...)
        lambda t: tf.TensorSpec(t.shape, t.dtype), next(iter(data)))
    graph = tf.function(model.train_step).get_concrete_function(spec).graph
    counts = collections.Counter()
    _count_full_size(graph, graph, "", counts)
    return dict(counts.most_common())


def _count_full_size(graph, outer, prefix, counts):
    size = BATCH * SEQUENCE * VOCABULARY
    for operation in graph.get_operations():
        if operation.type != "Placeholder":
            for output in operation.outputs:
                if output.shape.is_fully_defined() and output.shape.num_elements() == size:
                    counts[prefix + operation.type] += 1
        for name, value in operation.node_def.attr.items():
            if value.WhichOneof("value") == "func":
                # TF 2.21 keeps called functions on the outermost graph (private `_get_function`).
                function = outer._get_function(value.func.name)
                _count_full_size(function.graph, outer, f"{name}:", counts)


def measure(kind, steps, count_tensors):
    """One measurement of one kind, in this process: see the module's docstring."""
    data = batches(steps + 1)
    model = build(kind)
    meter = StepMeter()
    model.fit(data, epochs=1, callbacks=[meter], shuffle=False, verbose=0)
    result = {
        "kind": kind,
        "step_ms": 1000 * statistics.median(meter.seconds),
        "rss_growth_mib": (meter.rss_peak - meter.rss_before) / 2**20,
        "tf_step_peak_mib": (meter.tf_peak - meter.tf_resting) / 2**20,
    }
    if count_tensors:
        result["full_size_tensors"] = full_size_tensors(model, data)
    return result


def run_one(kind, steps, count_tensors):
    """Runs `--one kind` in a fresh Python process and returns its result."""
    command = [sys.executable, "-m", "benchmarks.lm_memory", "--one", kind, "--steps", str(steps),
               "--vocabulary", str(VOCABULARY), "--sequence", str(SEQUENCE)]
    if CHUNK_ELEMENTS is not None:
        command += ["--chunk-elements", str(CHUNK_ELEMENTS)]
    if count_tensors:
        command.append("--count-tensors")
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if done.returncode:
        raise RuntimeError(f"{kind} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(kinds, rounds, steps):
    """All kinds, each round in a fresh process per kind, the order alternating.

    Returns:
        `{kind: [result per round]}`; each kind's first round also counts tensors.
    """
    def runner(kind):
        calls = []

        def one():
            calls.append(kind)
            return run_one(kind, steps, count_tensors=len(calls) == 1)
        return one

    return common.interleaved({kind: runner(kind) for kind in kinds}, rounds, alternate=True)


def table(results):
    """The markdown table: medians, and medians of per-round ratios to the
    student's own `fit` and to keras.distillation."""
    def median(kind, key):
        return statistics.median(r[key] for r in results[kind])

    def ratios(kind, key):
        return " / ".join(
            f"{common.median_ratio([r[key] for r in results[kind]], [r[key] for r in results[other]]):.2f}x"
            if other in results else "–"
            for other in ("student_fit", "keras_distillation"))

    rows = []
    for kind in results:
        counts = next(r["full_size_tensors"] for r in results[kind] if "full_size_tensors" in r)
        views = sum(n for op, n in counts.items() if op.split(":")[-1] in VIEWS)
        branched = sum(n for op, n in counts.items() if ":" in op)
        rows.append([
            kind,
            f"{median(kind, 'step_ms'):.0f}", ratios(kind, "step_ms"),
            f"{median(kind, 'rss_growth_mib'):.0f}", ratios(kind, "rss_growth_mib"),
            f"{median(kind, 'tf_step_peak_mib'):.0f}", ratios(kind, "tf_step_peak_mib"),
            f"{sum(counts.values())} ({views} views, {branched} in branches)",
        ])
    return common.markdown_table(
        ["kind", "step ms", "time / student fit / keras.distillation",
         "peak RSS growth MiB", "RSS / student fit / keras.distillation",
         "step working memory MiB", "working memory / student fit / keras.distillation",
         "(B,S,V)-sized tensors"], rows)


TARGETS = (("student_fit", 1.8), ("keras_distillation", 0.6))  # issue 14: peak RSS growth ratios
FUSED_TARGETS = (0.5, 1.3)  # issue 29: RSS growth / student fit (at 256k / 512), step time / unfused (32k / 128)


def targets(results):
    """One line per keras_kd kind: its RSS-growth ratios against issue 14's targets."""
    lines = []
    for kind in ("keras_kd", "keras_kd_t1", "keras_kd_teacher_only"):
        if kind not in results:
            continue
        checks = []
        for other, limit in TARGETS:
            if other in results:
                value = common.median_ratio([r["rss_growth_mib"] for r in results[kind]],
                                            [r["rss_growth_mib"] for r in results[other]])
                checks.append(f"{value:.2f}x {other} (target <= {limit}x: "
                              f"{'met' if value <= limit else 'missed'})")
        lines.append(f"- `{kind}` peak RSS growth: " + "; ".join(checks))
    for kind in ("keras_kd_fused", "keras_kd_t1_fused", "keras_kd_teacher_only_fused"):
        unfused = kind.removesuffix("_fused")
        if kind not in results:
            continue
        checks = []
        if "student_fit" in results:
            value = common.median_ratio([r["rss_growth_mib"] for r in results[kind]],
                                        [r["rss_growth_mib"] for r in results["student_fit"]])
            checks.append(f"peak RSS growth {value:.2f}x student_fit (issue 29 target at 256k / 512: "
                          f"<= {FUSED_TARGETS[0]}x)")
        if unfused in results:
            value = common.median_ratio([r["step_ms"] for r in results[kind]],
                                        [r["step_ms"] for r in results[unfused]])
            checks.append(f"step time {value:.2f}x `{unfused}` (target at 32k / 128: <= {FUSED_TARGETS[1]}x)")
        lines.append(f"- `{kind}`: " + "; ".join(checks))
    return "\n".join(lines)


def tensor_breakdown(results):
    """One line per kind: its (B,S,V)-sized tensors by operation type."""
    lines = []
    for kind in results:
        counts = next(r["full_size_tensors"] for r in results[kind] if "full_size_tensors" in r)
        lines.append(f"- `{kind}`: " + ", ".join(f"{op} {n}" for op, n in counts.items()))
    return "\n".join(lines)


def main():
    global VOCABULARY, SEQUENCE, CHUNK_ELEMENTS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", choices=KINDS, help="measure one kind in this process; print JSON")
    parser.add_argument("--count-tensors", action="store_true",
                        help="with --one: also count the train step's (B,S,V)-sized tensors")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--vocabulary", type=int, default=VOCABULARY)
    parser.add_argument("--sequence", type=int, default=SEQUENCE)
    parser.add_argument("--chunk-elements", type=int, default=None)
    parser.add_argument("--results", default=RESULTS, help="where to write the markdown (default: %(default)s)")
    args = parser.parse_args()
    VOCABULARY, SEQUENCE, CHUNK_ELEMENTS = args.vocabulary, args.sequence, args.chunk_elements
    if CHUNK_ELEMENTS is not None:
        from keras_kd.losses import _fused_head

        _fused_head.CHUNK_ELEMENTS = CHUNK_ELEMENTS
    if args.one:
        print(json.dumps(measure(args.one, args.steps, args.count_tensors)))
        return
    load = os.getloadavg()
    results = run(args.kinds, args.rounds, args.steps)
    load_after = os.getloadavg()
    text = "\n\n".join([
        f"Vocabulary {VOCABULARY:,}, sequence {SEQUENCE}, batch {BATCH}; teacher GPT-2 hidden "
        f"{TEACHER['hidden_dim']} x {TEACHER['num_layers']} layers, student hidden "
        f"{STUDENT['hidden_dim']} x {STUDENT['num_layers']}. {args.rounds} interleaved rounds, "
        f"one process per kind and round, {args.steps} steps after a warm-up step. "
        f"{common.machine()}; load average {load[0]:.2f} before, {load_after[0]:.2f} after. "
        f"Reproduce: `python -m benchmarks.lm_memory --rounds {args.rounds} --steps {args.steps}"
        f" --vocabulary {VOCABULARY} --sequence {SEQUENCE}"
        f"{f' --chunk-elements {CHUNK_ELEMENTS}' if CHUNK_ELEMENTS else ''}"
        f"{' --kinds ' + ' '.join(args.kinds) if args.kinds != list(KINDS) else ''}`.",
        table(results),
        targets(results),
        "(B,S,V)-sized tensors in the traced train step, by operation type "
        "(`then_branch:`/`else_branch:` inside a `tf.cond`, of which one branch runs):",
        tensor_breakdown(results),
    ])
    print(text)
    with open(args.results, "w") as file:
        file.write("# One language-model distillation step: memory and speed\n\n" + text + "\n")
    print(f"Wrote {args.results}")


if __name__ == "__main__":
    main()
