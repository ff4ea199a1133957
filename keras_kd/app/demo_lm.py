"""`keras-kd demo lm`: a GPT-2-style teacher, a student from labels and
distilled students on the docstrings of Python's standard library, compared
by held-out bits per byte.

Everything is built in memory: the text is read from the installed standard
library (`keras_kd.app.datasets.stdlib_docstrings`), the tokenizer is KerasHub's
GPT-2 tokenizer over the 256 byte symbols, and the models are KerasHub
`GPT2CausalLM`s built from constructor arguments. Nothing is downloaded.
"""

import math
import os
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from keras_kd import _extras
from keras_kd._files import atomic_path, check_output_folder
from keras_kd.app import datasets
from keras_kd.app.demo import text_table
from keras_kd.distiller import Distiller
from keras_kd.losses.logits import LogitsDistillation

# KerasHub (the demo's tokenizer and GPT-2 models) comes with the 'demo' extra.
keras_hub = _extras.require("keras_hub", "keras-kd demo lm (keras_kd.app.demo_lm)", "demo")

OUTPUT = "kd_output_lm"
QUICK_OUTPUT = "kd_output_lm_quick"  # never over a full run's files
SEQUENCE_LENGTH = 128
BATCH_SIZE = 32
LEARNING_RATE = 2e-3
WARMUP_STEPS = 100
CLIP_NORM = 1.0
"""Global gradient-norm clipping of every model's optimizer. Without it,
these runs split into two outcomes by batch order: the forward-KL student
of the benchmark's seed-0 teacher scored 3.220 / 3.827 / 3.253 validation
bits per byte for shuffle seeds 0 / 1 / 2 (one of three stuck on a
plateau from the first epoch); with it, 3.184 / 3.156 for seeds 0 / 1."""
TEACHER_EPOCHS = 6
"""The benchmark's teacher (`benchmarks/lm.py`)."""
DEMO_TEACHER_EPOCHS = 4
"""`keras-kd demo lm`'s teacher: fewer epochs, so that the demo prints its
table in about 10 minutes on 2 cores (9 min 24 s and 10 min 24 s measured).
3 epochs (8 min 37 s) leave a teacher too weak to beat the labels."""
STUDENT_EPOCHS = 3
TOP_K = (16, 64)
"""The top-K caches of `demo lm --all-rows` and the benchmark."""
SAMPLED_K = (16, 64)
"""The caches of K drawn tokens (`top_k_method="sampled"`) of the same."""
ON_POLICY_FRACTION = 0.5
PROMPT_BYTES = 32
"""Prompt length of the sequence-level and on-policy rows (`prompts_and_continuations`)."""
QUICK_DOCSTRINGS = 64
QUICK_EPOCHS = 1
TEMPERATURE = 1.0
STUDENT_LOSS_WEIGHT = 0.5
TEACHER = {"num_layers": 2, "num_heads": 6, "hidden_dim": 192, "intermediate_dim": 768}
STUDENT = {"num_layers": 2, "num_heads": 3, "hidden_dim": 96, "intermediate_dim": 256}
QUICK_TEACHER = {"num_layers": 1, "num_heads": 2, "hidden_dim": 32, "intermediate_dim": 64}
QUICK_STUDENT = {"num_layers": 1, "num_heads": 1, "hidden_dim": 16, "intermediate_dim": 32}
"""--quick's models: one layer each, for a run of seconds (most of it tracing)."""
END_OF_TEXT = "<|endoftext|>"
NEVER_MERGED = "À"
"""The byte 0xC0 as a GPT-2 byte symbol. It never occurs in UTF-8 text, so
the one merge rule `"À À"` never applies (keras-hub 0.32 cannot build a
BytePairTokenizer without merges: an empty list becomes a float32 tensor,
`NotFoundError: ... HashTableV2 ... key_dtype=DT_FLOAT`)."""


def tokenizer():
    """A byte-level GPT-2 tokenizer built in memory: one token per UTF-8 byte.

    The vocabulary is GPT-2's 256 byte symbols (ids 0-255, in the order of
    `bytes_to_unicode`), `"<|endoftext|>"` (id 256, the start token) and the never-produced symbol `"ÀÀ"` (id 257) of the single merge
    rule KerasHub requires, so every UTF-8 byte of the text is one token.

    Returns:
        A `keras_hub.models.GPT2Tokenizer` with a vocabulary of 258.

    Example:

    ```python
    keras_kd.app.demo_lm.tokenizer()("héllo")  # [71, 127, 102, 75, 75, 78]: 6 bytes
    ```
    """
    vocabulary = {symbol: i for i, symbol in enumerate(byte_symbols())}
    vocabulary[END_OF_TEXT] = len(vocabulary)
    vocabulary[NEVER_MERGED * 2] = len(vocabulary)
    return keras_hub.models.GPT2Tokenizer(vocabulary=vocabulary,
                                          merges=[f"{NEVER_MERGED} {NEVER_MERGED}"])


def byte_symbols():
    """GPT-2's printable stand-in for each of the 256 bytes, in its id order.

    Printable bytes stand for themselves; the 68 others (controls, space,
    some Latin-1) are mapped, in byte order, to the code points from 256 on,
    so a byte-pair vocabulary never holds whitespace or control characters.
    This is the table of GPT-2's `bytes_to_unicode` (Radford et al., 2019),
    written here so the demo needs no private KerasHub module.

    Returns:
        A list of 256 one-character strings, the first the printable ones
        (`!`..`~`, `¡`..`¬`, `®`..`ÿ`), then the stand-ins.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]


def preprocessor(sequence_length=SEQUENCE_LENGTH):
    """The causal-LM preprocessor: strings to `(x, y, sample_weight)`.

    Each string becomes `"<|endoftext|>"` followed by its bytes, right-padded
    (id 0, weight 0) to `sequence_length + 1` tokens; `x` is
    `{"token_ids", "padding_mask"}` without the last token, `y` the next
    tokens and `sample_weight` 1 where `y` is a byte of the text, 0 on
    padding. No end token is appended, so the tokens predicted are exactly
    the text's bytes.

    Args:
        sequence_length: tokens per row of `x`; longer strings are truncated
            (`pieces` cuts the text to fit).

    Returns:
        A `keras_hub.models.GPT2CausalLMPreprocessor`.
    """
    return keras_hub.models.GPT2CausalLMPreprocessor(
        tokenizer=tokenizer(), sequence_length=sequence_length, add_end_token=False)


def pieces(texts, max_bytes=SEQUENCE_LENGTH):
    """Cuts texts into pieces of at most `max_bytes` UTF-8 bytes.

    A piece ends at a line end where one fits; a line longer than
    `max_bytes` is cut between characters. Nothing is dropped or reordered:
    the pieces of a text joined again give the text.

    Args:
        texts: strings.
        max_bytes: the longest piece, in UTF-8 bytes.

    Returns:
        A list of non-empty strings.
    """
    result = []
    for text in texts:
        current = ""
        for line in text.splitlines(keepends=True):
            while len(line.encode()) > max_bytes:
                if current:
                    result.append(current)
                    current = ""
                cut = max_bytes
                while len(line[:cut].encode()) > max_bytes:
                    cut -= 1
                result.append(line[:cut])
                line = line[cut:]
            if len((current + line).encode()) > max_bytes:
                result.append(current)
                current = line
            else:
                current += line
        if current:
            result.append(current)
    return result


def prompts_and_continuations(texts, prompt_bytes=PROMPT_BYTES):
    """Splits each text into a prompt and its continuation, for
    sequence-level and on-policy distillation.

    The prompt is the text's first `prompt_bytes` UTF-8 bytes (fewer if a
    character would be cut, and at most half of a short text); the
    continuation is the rest.

    Args:
        texts: strings.
        prompt_bytes: the longest prompt, in bytes.

    Returns:
        `(prompts, continuations)`, two lists as long as `texts`; each
        prompt joined with its continuation gives the text.

    Example:

    ```python
    demo_lm.prompts_and_continuations(["def add(a, b):"], prompt_bytes=4)
    # (["def "], ["add(a, b):"])
    ```
    """
    prompts, continuations = [], []
    for text in texts:
        cut = min(prompt_bytes, len(text.encode()) // 2)
        prompt = text[:cut]
        while len(prompt.encode()) > cut:
            prompt = prompt[:-1]
        prompts.append(prompt)
        continuations.append(text[len(prompt):])
    return prompts, continuations


def batches(texts, preprocess, batch_size=BATCH_SIZE, seed=None):
    """Tokenized `(x, y, sample_weight)` batches of `texts`.

    The texts are tokenized once, up front. For training (`seed` given),
    each epoch reshuffles the rows. For evaluation (`seed=None`), the rows
    keep their order and the last batch is filled up with empty rows (all
    padding, `sample_weight` 0, so they count for nothing), so that every
    batch has one shape and a model's predict step is traced once.

    Args:
        texts: strings, each at most the preprocessor's sequence length in
            bytes (see `pieces`).
        preprocess: a causal-LM preprocessor (see `preprocessor`).
        batch_size: rows per batch.
        seed: the shuffle's seed; None for evaluation.

    Returns:
        A `tf.data.Dataset` of `({"token_ids", "padding_mask"}, y,
        sample_weight)`. A training dataset continues its sequence of
        epoch orders each time it is iterated again; `fresh_batches` gives
        every model the same orders.
    """
    return fresh_batches(texts, preprocess, batch_size, seed)()


def fresh_batches(texts, preprocess, batch_size=BATCH_SIZE, seed=None):
    """A function returning a new `batches(texts, ...)` dataset per call,
    the texts tokenized once.

    Each new dataset starts the same sequence of epoch orders, so models
    trained one after another in one process see the same batches (one
    dataset iterated again continues its sequence instead: on the LM
    demo's seed 0, the forward-KL student scored 3.876 validation bits per
    byte on a continued sequence against 3.220 on a fresh one).

    Args: as `batches`.

    Returns:
        A function of no arguments returning a `tf.data.Dataset`.
    """
    texts = list(texts)
    if seed is None:
        texts += [""] * (-len(texts) % batch_size)
    rows = tf.data.Dataset.from_tensor_slices(texts).batch(1024).map(preprocess)
    arrays = [tf.concat(parts, axis=0) for parts in zip(*[tf.nest.flatten(b) for b in rows])]
    tokens = tf.nest.pack_sequence_as(next(iter(rows)), arrays)

    def make():
        dataset = tf.data.Dataset.from_tensor_slices(tokens)
        if seed is not None:
            dataset = dataset.shuffle(len(texts), seed=seed)
        return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)

    return make


def cache_batches(teacher, texts, preprocess, path, top_k=None, seed=0, batch_size=BATCH_SIZE,
                  top_k_method="top"):
    """Training batches whose teacher outputs come from a cache on disk.

    The cache (`keras_kd.cache_teacher_outputs`) is written in `path` in
    the texts' order and read with `fresh_batches(texts, preprocess,
    seed=seed)`'s shuffle: created under the same global seed, both give
    the same batches at every epoch, so that a cache row differs from the
    online rows by its teacher outputs alone.

    Args:
        teacher: the trained teacher LM.
        texts: the training pieces (see `pieces`).
        preprocess: the causal-LM preprocessor.
        path: a folder for the cache (created).
        top_k: keep the teacher's `top_k` most likely tokens per position
            (plus the tail's mass); `None` keeps its full logits (float32).
        seed: the shuffle's seed.
        batch_size: rows per batch.
        top_k_method: `"top"`, or `"sampled"` to keep `top_k` tokens drawn
            from the teacher instead (see `keras_kd.cache_teacher_outputs`).

    Returns:
        `(dataset, seconds, bytes)`: the batches, the cache's build time and
        its size on disk.
    """
    from keras_kd.cache import cache_teacher_outputs

    texts = list(texts)
    start = time.perf_counter()
    in_order = batches(texts, preprocess, batch_size)  # padded with empty rows at the end, dropped below
    cache = cache_teacher_outputs(teacher, in_order, path=path, shuffle=False, top_k=top_k,
                                  top_k_method=top_k_method)
    seconds = time.perf_counter() - start
    stored = sum(os.path.getsize(os.path.join(path, name)) for name in os.listdir(path))
    data = cache.unbatch().take(len(texts)).shuffle(len(texts), seed=seed).batch(batch_size)
    data = data.apply(tf.data.experimental.assert_cardinality(-(-len(texts) // batch_size)))
    return data.prefetch(tf.data.AUTOTUNE), seconds, stored


def sequence_level_data(teacher, texts, preprocess, seed=0):
    """Sequence-level KD's batches: the teacher's greedy continuations of
    the texts' prompts (`prompts_and_continuations`), shuffled each epoch.

    Returns:
        `(dataset, seconds)`: the batches and the generation time.
    """
    from keras_kd import lm

    prompts, _ = prompts_and_continuations(texts)
    teacher.compile(sampler="greedy")
    start = time.perf_counter()
    data = lm.sequence_level_batches(teacher, prompts, preprocess, BATCH_SIZE, stop_token_ids=None)
    seconds = time.perf_counter() - start
    data = data.unbatch().shuffle(len(prompts), seed=seed).batch(BATCH_SIZE)
    return data.apply(tf.data.experimental.assert_cardinality(-(-len(prompts) // BATCH_SIZE))), seconds


def on_policy_data(student, texts, preprocess, fraction, seed=0):
    """On-policy (GKD) batches: a `fraction` of each batch's prompts
    continued by the current `student` (sampled at temperature 1), the rest
    by the given text; see `keras_kd.lm.OnPolicyBatches`."""
    from keras_kd import lm

    prompts, continuations = prompts_and_continuations(texts)
    student.compile(sampler=keras_hub.samplers.RandomSampler(temperature=1.0, seed=seed))
    return lm.OnPolicyBatches(student, prompts, continuations, preprocess, fraction=fraction,
                              batch_size=BATCH_SIZE, seed=seed, stop_token_ids=None)


def language_model(config, name, vocabulary_size=258, sequence_length=SEQUENCE_LENGTH):
    """A GPT-2-style causal LM built from constructor arguments (no preset).

    Args:
        config: `GPT2Backbone` arguments: `num_layers`, `num_heads`,
            `hidden_dim`, `intermediate_dim`.
        name: the model's name.
        vocabulary_size: the tokenizer's vocabulary.
        sequence_length: the longest input.

    Returns:
        A `keras_hub.models.GPT2CausalLM` without preprocessor: it takes
        `{"token_ids", "padding_mask"}` and returns logits of shape
        `(batch, sequence, vocabulary_size)`.
    """
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=vocabulary_size, max_sequence_length=sequence_length, dropout=0.0, **config)
    return keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None, name=name)


def teacher_model(quick=False):
    """The demo's teacher: 2 layers of width 192 (964k weights); with
    `quick`, 1 layer of width 32.

    Chosen over 4 layers of width 128 (843k weights) on the validation
    modules, seed 0, 4 epochs: 3.15 bits per byte against 3.49. The
    teacher must know much more than the student for distillation to pay.
    Measured on the validation modules
    (seed 0, an 8-epoch schedule): 3.22 bits per byte after 3 epochs, 2.84
    after 4, 2.45 after 8, against 3.91 for the student from labels alone
    (3 epochs); half labels, half forward KL from that 8-epoch teacher
    brought the student to 3.39 (-13%). The benchmark trains it
    `TEACHER_EPOCHS` = 6 epochs; `keras-kd demo lm` `DEMO_TEACHER_EPOCHS` = 4
    (with 6, the demo took 11 min 42 s on 2 quiet cores, over its 10-minute
    target).
    """
    return language_model(QUICK_TEACHER if quick else TEACHER, "teacher")


def student_model(quick=False):
    """The demo's student: 2 layers of width 96 (212k weights, 4.6x fewer);
    with `quick`, 1 layer of width 16."""
    return language_model(QUICK_STUDENT if quick else STUDENT, "student")


def optimizer(steps):
    """Adam: linear warm-up to the learning rate (`WARMUP_STEPS`, at most a
    quarter of the run), then cosine decay to 0 at step `steps`; gradients
    clipped to a global norm of `CLIP_NORM`."""
    warmup = min(WARMUP_STEPS, steps // 4)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, steps - warmup, warmup_target=LEARNING_RATE, warmup_steps=warmup)
    return keras.optimizers.Adam(schedule, global_clipnorm=CLIP_NORM)


def next_token_loss():
    """Cross-entropy of the next token, from logits: its mean over real tokens.

    `reduction="mean_with_sample_weight"` divides by the sum of the batch's
    `sample_weight` (its real tokens); Keras's default divides by every
    position, padding included, which scales each batch by its share of
    real tokens.
    """
    return keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, reduction="mean_with_sample_weight")


def train_on_labels(model, data, epochs, callbacks=(), verbose="auto"):
    """Trains `model` on next-token labels alone; returns it."""
    model.compile(optimizer(epochs * len(data)), next_token_loss())
    model.fit(data, epochs=epochs, callbacks=list(callbacks), shuffle=False, verbose=verbose)
    return model


def keras_distiller(teacher, student, steps):
    """keras.distillation's Distiller in its correct configuration for logits.

    `LogitsDistillation(loss=keras.losses.KLDivergence())` (an instance, so
    that it applies the softmax), T=1, half labels. It averages both terms
    over every position of the `(batch, sequence, vocabulary)` logits,
    padding included: its `compute_loss` does not use `sample_weight`.
    """
    distiller = keras.distillation.Distiller(
        teacher=teacher,
        student=student,
        distillation_losses=keras.distillation.LogitsDistillation(
            temperature=TEMPERATURE, loss=keras.losses.KLDivergence()),
        student_loss_weight=STUDENT_LOSS_WEIGHT,
    )
    distiller.compile(optimizer=optimizer(steps), loss=next_token_loss())
    return distiller


def keras_kd_distiller(teacher, student, steps, loss=None):
    """keras_kd's Distiller for a causal LM: masked token-level KD.

    The token mask is the batch's `sample_weight`; every token-level term
    is a mean over real tokens only.

    Args:
        teacher: the trained teacher LM.
        student: the student LM.
        steps: optimizer steps of the whole run (for the schedule).
        loss: the distillation loss; defaults to the recipe's forward KL,
            `LogitsDistillation(temperature=1.0)`.

    Returns:
        A compiled `keras_kd.Distiller` taking `(x, y, sample_weight)`.

    Reference:
        Hinton et al., "Distilling the Knowledge in a Neural Network",
        arXiv:1503.02531; Kim & Rush, "Sequence-Level Knowledge
        Distillation" (word-level KD), EMNLP 2016, arXiv:1606.07947.
    """
    distiller = Distiller(
        teacher, student, loss or LogitsDistillation(temperature=TEMPERATURE),
        student_loss_weight=STUDENT_LOSS_WEIGHT,
    )
    distiller.compile(optimizer(steps), next_token_loss())
    return distiller


def token_nll(logits, targets, mask):
    """Summed negative log-likelihood of the targets over real tokens.

    Args:
        logits: `(batch, sequence, vocabulary)`.
        targets: `(batch, sequence)` token ids.
        mask: `(batch, sequence)`, 1 for real tokens and 0 for padding.

    Returns:
        `(nats, tokens)`: the summed NLL in nats over the tokens where
        `mask` is 1, and their number, as float64 NumPy scalars.
    """
    log_probs = keras.ops.log_softmax(keras.ops.cast(logits, "float32"), axis=-1)
    picked = keras.ops.take_along_axis(log_probs, keras.ops.expand_dims(targets, -1), axis=-1)[..., 0]
    mask = keras.ops.cast(mask, "float32")
    nats = -keras.ops.sum(picked * mask)
    return np.float64(keras.ops.convert_to_numpy(nats)), np.float64(keras.ops.convert_to_numpy(keras.ops.sum(mask)))


def bits_per_byte(model, data):
    """Held-out bits per byte of a byte-level LM.

    The NLL summed over every real (unpadded) target token of `data`,
    divided by `ln 2` times the number of bytes. With one token per byte
    (see `tokenizer`) the bytes are the real tokens, so this is the mean NLL
    over real tokens in bits; padding never counts.

    Args:
        model: a causal LM taking `x` and returning logits.
        data: `(x, y, sample_weight)` batches (see `batches`).

    Returns:
        Bits per byte, a float.
    """
    nats = tokens = 0.0
    for x, y, mask in data:
        batch_nats, batch_tokens = token_nll(model.predict_on_batch(x), y, mask)
        nats += batch_nats
        tokens += batch_tokens
    return nats / (math.log(2) * tokens)


def load_splits(quick=False, sequence_length=SEQUENCE_LENGTH):
    """The demo's text: train, validation and test pieces of the docstrings.

    Each split's docstrings, in module order, are joined by blank lines and
    cut at line ends into pieces of at most `sequence_length` bytes (about
    100 bytes on average, so a quarter of the positions are padding).
    Joined, short docstrings share a row with their neighbours of the same
    module instead of each filling a mostly padded row of its own.

    Args:
        quick: only the first `QUICK_DOCSTRINGS` docstrings of each split.
        sequence_length: the longest piece, in bytes.

    Returns:
        `(train, validation, test)` lists of pieces (see `pieces`).
    """
    splits = datasets.stdlib_docstrings()
    if quick:
        splits = [split[:QUICK_DOCSTRINGS] for split in splits]
    return tuple(pieces(["\n\n".join(split)], sequence_length) for split in splits)


def output_files(all_rows=False):
    """The files `run` writes in its output folder."""
    names = ["teacher.keras", "student_alone.keras", "student_keras_distillation.keras", "student.keras"]
    if all_rows:
        names += [f"student_top{k}.keras" for k in TOP_K] + [f"student_{k}draw.keras" for k in SAMPLED_K]
        names += ["student_sequence_level.keras", "student_on_policy.keras"]
    return names


def run(output=None, quick=False, seed=0, all_rows=False, force=False):
    """Trains the teacher and the students, prints the table and writes the files.

    Rows: the teacher (next-token labels, `DEMO_TEACHER_EPOCHS` epochs);
    the student from labels alone; the student distilled by
    keras.distillation (`keras_distiller`) and by keras_kd
    (`keras_kd_distiller`). With `all_rows`, keras_kd also from top-16 and
    top-64 teacher caches (`cache_batches`), sequence-level
    (`sequence_level_data`) and on-policy with λ = 0.5 (`on_policy_data`).
    Every student row takes `STUDENT_EPOCHS` epochs of as many batches, so
    the same number of optimizer steps (the online and cache rows the same
    batches). Each model is scored on the test modules, which no model saw.

    Args:
        output: folder for `teacher.keras`, `student_alone.keras`,
            `student_keras_distillation.keras`, `student.keras` (each with
            its preprocessor, so `generate("...")` works after
            `keras.models.load_model`) and `logs/` (TensorBoard: one run
            per model); defaults to `kd_output_lm`, or
            `kd_output_lm_quick` with `quick`.
        quick: one epoch of one-layer models on a few docstrings, for a
            smoke test: the table says its numbers are not results.
        seed: random seed of the weights and of the batch order.
        all_rows: add the offline (top-K cache), sequence-level and
            on-policy rows (about 16 more minutes on 2 cores).
        force: replace the files of `output_files` already in `output`;
            without it they are refused before anything is trained.

    Returns:
        The table's rows, one dict per model: `model`, `bits_per_byte`,
        `parameters`, `seconds`.

    Raises:
        ValueError: if `output` is a file or cannot be written, or holds
            files of `output_files` while `force` is false.
    """
    output = output or (QUICK_OUTPUT if quick else OUTPUT)
    check_output_folder(output, output_files(all_rows), force, "Demo output folder")
    teacher_epochs, student_epochs = (QUICK_EPOCHS, QUICK_EPOCHS) if quick else (
        DEMO_TEACHER_EPOCHS, STUDENT_EPOCHS)
    train, _, test = load_splits(quick)
    preprocess = preprocessor()
    train_data = fresh_batches(train, preprocess, seed=seed)  # one per model: the same batches
    test_data = batches(test, preprocess)
    student_steps = student_epochs * len(train_data())
    os.makedirs(output, exist_ok=True)
    logs = os.path.join(output, "logs")
    print(f"== {len(train)} training pieces, {len(test)} test pieces of at most "
          f"{SEQUENCE_LENGTH} bytes, batch {BATCH_SIZE}")

    def fresh(builder):
        keras.utils.set_random_seed(seed)
        return builder(quick)

    def board(run_name):
        return keras.callbacks.TensorBoard(os.path.join(logs, run_name))

    rows = []

    def record(name, model, file_name, start):
        seconds = time.perf_counter() - start
        save_with_preprocessor(model, preprocess, os.path.join(output, file_name), force)
        rows.append({"model": name, "bits_per_byte": bits_per_byte(model, test_data),
                     "parameters": model.count_params(), "seconds": seconds})

    print(f"== teacher: {epochs(teacher_epochs)} on next-token labels")
    start = time.perf_counter()
    teacher = train_on_labels(fresh(teacher_model), train_data(), teacher_epochs, [board("teacher")])
    record("teacher", teacher, "teacher.keras", start)

    print(f"== student from labels alone: {epochs(student_epochs)}")
    start = time.perf_counter()
    alone = train_on_labels(fresh(student_model), train_data(), student_epochs, [board("student_alone")])
    record("student, labels alone", alone, "student_alone.keras", start)

    def distil(title, name, file_name, make, data=None, student=None):
        print(f"== student distilled by {title}: {epochs(student_epochs)}")
        student = fresh(student_model) if student is None else student
        start = time.perf_counter()
        distiller = make(teacher, student, student_steps)
        distiller.fit(train_data() if data is None else data, epochs=student_epochs,
                      callbacks=[board(file_name[:-6])],
                      shuffle=False)
        record(name, student, file_name, start)

    distil("keras.distillation, KLDivergence(), T=1, half labels (padding averaged in)",
           "student, keras.distillation", "student_keras_distillation.keras", keras_distiller)
    distil("keras_kd, forward KL, T=1, half labels, real tokens only",
           "student, keras_kd", "student.keras", keras_kd_distiller)
    notes = []
    if all_rows:
        for k, method in [(k, "top") for k in TOP_K] + [(k, "sampled") for k in SAMPLED_K]:
            with tempfile.TemporaryDirectory() as folder:
                keras.utils.set_random_seed(seed)  # as for the online rows: the same batches
                data, seconds, stored = cache_batches(teacher, train, preprocess, os.path.join(folder, "cache"),
                                                      top_k=k, seed=seed, top_k_method=method)
                cache = f"top-{k}" if method == "top" else f"{k}-draw"
                notes.append(f"{cache} cache: {stored / 2**20:.1f} MiB, "
                             f"{stored / (len(train) * SEQUENCE_LENGTH):.0f} bytes per position, "
                             f"built in {seconds:.0f} s")
                distil(f"keras_kd from a {cache} teacher cache (no teacher in the step)",
                       f"student, keras_kd {cache} cache", f"student_{cache.replace('-', '')}.keras",
                       keras_kd_distiller, data)
        data, seconds = sequence_level_data(teacher, train, preprocess, seed)
        notes.append(f"sequence-level: the teacher's continuations generated in {seconds:.0f} s")
        distil("keras_kd sequence-level (the teacher's greedy continuations)",
               "student, keras_kd sequence-level", "student_sequence_level.keras", keras_kd_distiller, data)
        student = fresh(student_model)
        distil(f"keras_kd on-policy (lambda={ON_POLICY_FRACTION})", "student, keras_kd on-policy",
               "student_on_policy.keras", keras_kd_distiller,
               on_policy_data(student, train, preprocess, ON_POLICY_FRACTION, seed), student)

    print()
    print(format_table(rows))
    for note in notes:
        print(note)
    if quick:
        print(f"Quick run (one-layer models, {len(train)} pieces, {epochs(student_epochs)}): a smoke test of the "
              f"pipeline, not results. Run `keras-kd demo lm` without --quick for the comparison.")
    print(f"\nFiles in {output}/; TensorBoard: tensorboard --logdir {logs}")
    return rows


def epochs(count):
    """`count` epochs, in words."""
    return f"{count} epoch" + ("" if count == 1 else "s")


def save_with_preprocessor(model, preprocess, path, force=False):
    """Saves an LM's weights with the preprocessor, ready for `generate()`
    (atomically; an existing file only with `force`)."""
    with atomic_path(path, force) as partial:
        keras_hub.models.GPT2CausalLM(backbone=model.backbone, preprocessor=preprocess).save(partial)


def format_table(rows):
    """The table of `run` as text."""
    header = ("model", "test bits per byte", "parameters", "training time")
    return text_table(header, [
        (row["model"], f"{row['bits_per_byte']:.3f}", f"{row['parameters']:,}", f"{row['seconds']:.1f} s")
        for row in rows
    ])
