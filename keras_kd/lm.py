"""Language models: token masks, tokenizer checks, raw text through a preprocessor.

KerasHub's causal-LM preprocessors yield `(x, y, sample_weight)` batches with
`x = {"token_ids", "padding_mask"}` and `sample_weight` the mask of real
next-token targets; the Distiller averages every token-level term over the
real tokens only (`keras_kd.losses.base.masked_mean`).
"""

import math
import typing

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_kd import _keras_compat, _validation, taps


def token_mask(x, sample_weight, output):
    """The mask of real positions of a token-level batch, or `None`.

    Args:
        x: the batch's inputs.
        sample_weight: the batch's sample weights, or `None`.
        output: the student's output (a tensor or a structure; the first
            leaf decides).

    Returns:
        `None` when the output is not token-level (fewer than 3 axes:
        `(batch, classes)`); else, in this order of preference, the
        `sample_weight` when it has one weight per position (what KerasHub
        preprocessors yield), the inputs' `padding_mask`, or the Keras mask
        of the output.
    """
    leaf = keras.tree.flatten(output)[0]
    if len(leaf.shape) < 3:
        return None
    if sample_weight is not None and len(sample_weight.shape) == len(leaf.shape) - 1:
        return sample_weight
    if isinstance(x, dict) and "padding_mask" in x:
        return x["padding_mask"]
    return _keras_compat.keras_mask(leaf)


def holds_text(data):
    """Whether `data` (arrays, lists, tensors or a `tf.data.Dataset`) holds strings."""
    if isinstance(data, tf.data.Dataset):
        return any(spec.dtype == tf.string for spec in keras.tree.flatten(data.element_spec))
    if isinstance(data, (str, bytes)):
        return True
    if isinstance(data, tf.Tensor):
        return data.dtype == tf.string
    if isinstance(data, (list, tuple, np.ndarray)) and len(data):
        first = np.asarray(data).reshape(-1)[0] if not isinstance(data, tuple) else data[0]
        return isinstance(first, (str, bytes, np.str_, np.bytes_))
    return False


def preprocessed(preprocessor, x, y=None, sample_weight=None, batch_size=None):
    """Raw text through a KerasHub preprocessor, once per batch, in tf.data.

    Args:
        preprocessor: e.g. the student's `GPT2CausalLMPreprocessor`.
        x: strings (a list, array or tensor), or a `tf.data.Dataset` of
            batches of strings (or of `(x, y, sample_weight)` tuples).
        y: optional targets for array-like `x`.
        sample_weight: optional sample weights for array-like `x`.
        batch_size: the batch size for array-like `x` (default 32).

    Returns:
        A batched `tf.data.Dataset` of the preprocessor's outputs, e.g.
        `(x, y, sample_weight)` for a causal LM.

    Example:

    ```python
    batches = preprocessed(student.preprocessor, ["some text", "more"], batch_size=2)
    ```
    """
    if isinstance(x, tf.data.Dataset):
        dataset = x
    else:
        inputs = keras.utils.pack_x_y_sample_weight(x, y, sample_weight)
        dataset = tf.data.Dataset.from_tensor_slices(inputs).batch(batch_size or 32)
    return dataset.map(
        lambda *batch: preprocessor(*batch), num_parallel_calls=tf.data.AUTOTUNE
    ).prefetch(tf.data.AUTOTUNE)


def text_preprocessor(student, data):
    """The student's KerasHub preprocessor when `data` holds raw text, else `None`.

    Args:
        student: the student model.
        data: what `fit`/`evaluate` received as `x` (or `validation_data`).

    Returns:
        `student.preprocessor` when `data` holds strings and the student has
        one; `None` when `data` holds no strings, or the student is a model
        whose inputs cannot be told (subclassed) or take strings themselves.

    Raises:
        ValueError: if `data` holds strings, the student has no
            preprocessor and its inputs are not strings.
    """
    if not holds_text(data):
        return None
    preprocessor = getattr(student, "preprocessor", None)
    if preprocessor is not None:
        return preprocessor
    inputs = getattr(student, "inputs", None)  # None: subclassed, cannot tell
    if inputs and not any(str(i.dtype) == "string" for i in keras.tree.flatten(inputs)):
        raise ValueError(
            f"The data holds strings, but the student '{student.name}' takes "
            f"{[str(i.dtype) for i in keras.tree.flatten(inputs)]} inputs and has no "
            f"KerasHub preprocessor to turn text into token ids. Build the student "
            f"with its preprocessor (e.g. GPT2CausalLM(backbone, preprocessor=...)), "
            f"or pass token ids."
        )
    return None


def preprocess_text(student, x, y=None, sample_weight=None, batch_size=None):
    """`fit`/`evaluate` arguments with raw text through the student's preprocessor.

    Like `CausalLM.fit`: each batch is preprocessed once in the input
    pipeline, so teacher and student see the same token ids.

    Args:
        student: the student model.
        x, y, sample_weight, batch_size: as given to `fit`/`evaluate`.

    Returns:
        `(x, y, sample_weight, batch_size)`: unchanged without text, else
        `(preprocessed batches, None, None, None)`.

    Raises:
        ValueError: as `text_preprocessor`.
    """
    preprocessor = text_preprocessor(student, x)
    if preprocessor is None:
        return x, y, sample_weight, batch_size
    return preprocessed(preprocessor, x, y, sample_weight, batch_size), None, None, None


def preprocess_validation_text(student, validation_data, batch_size=None):
    """`fit`'s `validation_data` with raw text through the student's preprocessor.

    Raises:
        ValueError: as `text_preprocessor`.
    """
    if validation_data is None or text_preprocessor(student, validation_data) is None:
        return validation_data
    return preprocessed(
        student.preprocessor,
        *keras.utils.unpack_x_y_sample_weight(validation_data),
        batch_size=batch_size,
    )


def vocabulary(model):
    """The tokens of a KerasHub model's tokenizer in id order, or `None`.

    Entry `i` is the token of id `i` (`tokenizer.id_to_token(i)` for every
    id below `vocabulary_size()`), `None` for an id the tokenizer does not
    map. A byte-pair tokenizer's `get_vocabulary()` follows its vocabulary
    dict's key order, not the ids, so it is read only from tokenizers
    without `id_to_token` (Keras's lookup layers list theirs in id order).

    Args:
        model: a model, e.g. a KerasHub `CausalLM` with a preprocessor.

    Returns:
        A list of tokens, or `None` when the model has no tokenizer.
    """
    tokenizer = getattr(getattr(model, "preprocessor", None), "tokenizer", None)
    if tokenizer is None:
        return None
    if hasattr(tokenizer, "id_to_token") and hasattr(tokenizer, "vocabulary_size"):
        return [_token_of(tokenizer, i) for i in range(int(tokenizer.vocabulary_size()))]
    if hasattr(tokenizer, "get_vocabulary"):
        return list(tokenizer.get_vocabulary())
    return None


def _token_of(tokenizer, token_id):
    """`tokenizer.id_to_token(token_id)`, `None` for an id it does not map
    (a hole in a byte-pair vocabulary's ids)."""
    try:
        return tokenizer.id_to_token(token_id)
    except (ValueError, KeyError, IndexError):
        return None


def check_vocabularies(teachers, student, alignment=None):
    """Refuses models that tokenize differently; returns the logit size to
    cut to (`vocabulary_alignment="truncate"`), else `None`.

    Tokenizers are compared token by token in id order (`vocabulary`), so
    swapped, shifted or missing ids are refused with the first id that
    differs and what each tokenizer maps it to.

    Args:
        teachers: the list of teacher models.
        student: the student model.
        alignment: `None` or `"truncate"` (`Distiller(vocabulary_alignment=...)`).

    Returns:
        The number of classes every logit is cut to, or `None`.

    Raises:
        ValueError: if `alignment` is neither, if a teacher's tokenizer maps
            an id to another token than the student's, or if `"truncate"`
            would cut real tokens or cannot know the logit sizes.
    """
    if alignment not in (None, "truncate"):
        raise ValueError(
            f"`vocabulary_alignment` must be None or 'truncate', but received "
            f"{alignment!r}. Pass 'truncate' for vocabularies that differ only "
            f"by padding rows at the end."
        )
    student_vocabulary = vocabulary(student)
    for teacher in teachers:
        teacher_vocabulary = vocabulary(teacher)
        if None not in (teacher_vocabulary, student_vocabulary) and (
            teacher_vocabulary != student_vocabulary
        ):
            _refuse_different_tokens(teacher, student, teacher_vocabulary, student_vocabulary)
    if alignment is None:
        return None
    sizes = [
        spec.shape[-1]
        for model in teachers + [student]
        for spec in [keras.tree.flatten(taps.symbolic_outputs(model) or [None])[0]]
        if spec is not None
    ]
    if len(sizes) != len(teachers) + 1:
        raise ValueError(
            "vocabulary_alignment='truncate' needs the logit sizes of every "
            "model, but a model has no known output shape (a subclassed model "
            "never called). Call the models on a batch once first."
        )
    size = min(sizes)
    for tokens in (student_vocabulary, *(vocabulary(t) for t in teachers)):
        if tokens is not None and len(tokens) > size:
            raise ValueError(
                f"vocabulary_alignment='truncate' cuts the logits to {size} "
                f"classes, but the tokenizer has {len(tokens)} tokens: real "
                f"tokens would be cut, not padding rows. Distil between models "
                f"whose logits cover the whole vocabulary."
            )
    return size


def _refuse_different_tokens(teacher, student, teacher_vocabulary, student_vocabulary):
    """Raises the error naming the first id the two tokenizers map differently."""
    size = max(len(teacher_vocabulary), len(student_vocabulary))
    differ = next(
        i for i in range(size)
        if _at(teacher_vocabulary, i) != _at(student_vocabulary, i)
    )

    def meaning(tokens):
        token = _at(tokens, differ)
        return "no token" if token is None else repr(token)

    raise ValueError(
        f"The teacher '{teacher.name}' and the student '{student.name}' "
        f"tokenize differently: their vocabularies ({len(teacher_vocabulary)} "
        f"and {len(student_vocabulary)} tokens) first differ at token id "
        f"{differ}, which is {meaning(teacher_vocabulary)} to the teacher's "
        f"tokenizer and {meaning(student_vocabulary)} to the student's, so the "
        f"same id would mean different tokens to the two models and every "
        f"position of that id would teach the wrong class. Distil between "
        f"models that share one tokenizer: the same vocabulary, ids included, "
        f"and the same merges."
    )


def _at(tokens, index):
    return tokens[index] if index < len(tokens) else None


def cut_logits(logits, size):
    """Logits cut to their first `size` classes (`vocabulary_alignment="truncate"`).

    Args:
        logits: a tensor, a `tf.TensorSpec` or a structure of them.
        size: the number of classes to keep, or `None` for all.

    Returns:
        The same structure, each leaf cut on its last axis.

    Raises:
        ValueError: if `logits` is a `TopK` teacher cache (its ids may lie
            beyond the cut) and `size` is not `None`.
    """
    if size is None:
        return logits
    if isinstance(logits, TopK):
        raise ValueError(
            "vocabulary_alignment='truncate' cannot cut a top-K teacher cache "
            "(its token ids may lie beyond the cut). Cache full logits."
        )

    def cut(value):
        if isinstance(value, tf.TensorSpec):
            return tf.TensorSpec(value.shape[:-1] + [size], value.dtype)
        return value[..., :size]

    return keras.tree.map_structure(cut, logits)


class TopK(typing.NamedTuple):
    """A teacher's next-token distribution kept as K tokens per position.

    Either its K most likely tokens (`top_k_targets`) or K tokens drawn from
    it (`sampled_targets`).

    Attributes:
        log_probs: `(..., K)` log-probabilities of those tokens (at T=1;
            drawn tokens: the log of the fraction of the K draws, `-inf` for
            a repeated draw), stored in float16 or bfloat16 (or float32).
        ids: `(..., K)` int32 token ids, most likely (most drawn) first.
        tail_log_mass: `(...)` log of the probability of every other token
            (`-inf` when the K tokens hold it all, as drawn tokens do).
    """

    log_probs: typing.Any
    ids: typing.Any
    tail_log_mass: typing.Any


def top_k_targets(logits, k, dtype="float16"):
    """The top-K summary of a teacher's logits, as `cache_teacher_outputs(top_k=K)` stores it.

    Args:
        logits: teacher logits `(..., vocabulary)`.
        k: how many tokens to keep per position.
        dtype: the storage type of the log-probabilities.

    Returns:
        A `TopK`; `6K + 2` bytes per position in float16. float16 rounds
        each stored log-probability to 11 significant bits, which changes
        the KL by at most about `2^-11 * sum_top p |log p|` per position:
        negligible for a trained teacher's peaked distribution, as large as
        the KL itself for a random model's near-uniform one (use float32).
    """
    if logits.shape[-1] is not None and k > logits.shape[-1]:
        raise ValueError(
            f"top_k={k} is more than the teacher's vocabulary of {logits.shape[-1]} "
            f"tokens. Pass top_k <= {logits.shape[-1]} (top_k={logits.shape[-1]} keeps "
            f"the whole distribution), or top_k_method='sampled' to draw {k} tokens."
        )
    log_p = ops.log_softmax(ops.cast(logits, "float32"), axis=-1)
    log_probs, ids = tf.math.top_k(log_p, k=k)
    if k >= logits.shape[-1]:  # the whole vocabulary: no tail, not float32 noise
        tail = ops.full(ops.shape(log_probs)[:-1], -np.inf)
    else:
        tail = _log_one_minus(ops.logsumexp(log_probs, axis=-1))
    return TopK(ops.cast(log_probs, dtype), ops.cast(ids, "int32"), ops.cast(tail, dtype))


def sampled_targets(logits, k, dtype="float16", seed=None):
    """K tokens drawn from the teacher's distribution per position, as
    `cache_teacher_outputs(top_k=K, top_k_method="sampled")` stores them.

    Each position keeps the distinct tokens among K draws (with
    replacement) from `softmax(logits)` and the fraction of the draws each
    one got: an empirical distribution `p_hat` whose expectation is the
    teacher's `p`. The cross-entropy to the student, and so the gradient of
    the forward KL, is then unbiased: `E[-sum p_hat log q] = -sum p log q`,
    where the top-K tokens alone drop (and bias) the rest of the
    distribution. Repeated draws keep their slot with a `-inf`
    log-probability (weight 0).

    Args:
        logits: teacher logits `(..., vocabulary)`.
        k: how many tokens to draw per position.
        dtype: the storage type of the log-probabilities.
        seed: the draws' op seed (with the global seed: reproducible).

    Returns:
        A `TopK` with no tail (`tail_log_mass = -inf`), the most drawn token
        first; `6K + 2` bytes per position in float16, as `top_k_targets`.

    Reference:
        Anshumann et al., "Sparse Logit Sampling: Accelerating Knowledge
        Distillation in LLMs", ACL 2025, arXiv:2503.16870.
    """
    logits = ops.cast(logits, "float32")
    leading = tf.shape(logits)[:-1]
    rows = tf.reshape(logits, [-1, tf.shape(logits)[-1]])
    ids = tf.sort(tf.random.categorical(rows, k, dtype="int32", seed=seed), axis=-1)
    draws = tf.reduce_sum(tf.cast(ids[:, :, None] == ids[:, None, :], "float32"), axis=-1)
    first = tf.concat([tf.ones_like(ids[:, :1], "bool"), ids[:, 1:] != ids[:, :-1]], axis=-1)
    log_probs = tf.where(first, tf.math.log(draws / k), -np.inf)
    order = tf.argsort(log_probs, direction="DESCENDING", stable=True)
    shape = tf.concat([leading, [k]], 0)
    return TopK(
        ops.cast(tf.reshape(tf.gather(log_probs, order, batch_dims=1), shape), dtype),
        tf.reshape(tf.gather(ids, order, batch_dims=1), shape),
        ops.cast(tf.fill(leading, -np.inf), dtype),
    )


def top_k_kl(top, student_logits):
    """KL from a top-K teacher to the student, over K tokens plus one tail bucket.

    The teacher's distribution is known on its K most likely tokens and as
    one total for the rest; the student's is coarsened the same way (its
    probabilities of those K tokens, and one bucket for the rest). The value
    is the exact KL between the two (K+1)-bucket distributions:
    `sum_top p (log p - log q) + p_tail (log p_tail - log q_tail)`. By the
    data-processing inequality it is a lower bound of the full KL; the gap
    is exactly `p_tail * KL(p( . | tail) ‖ q( . | tail))`, zero at K = V.
    Top-K targets are a biased estimate of the teacher's distribution
    (Anshumann et al.); the tail bucket keeps the mass of the rest, as
    tail-aware objectives do (Dasgupta et al.).

    Args:
        top: a `TopK` of the teacher.
        student_logits: `(..., vocabulary)` student logits.

    Returns:
        `(...)` per-position values, float32.

    Reference:
        Anshumann et al., "Sparse Logit Sampling: Accelerating Knowledge
        Distillation in LLMs", ACL 2025, arXiv:2503.16870. Dasgupta, Cohn &
        Baldwin, "Don't Ignore the Tail: Decoupling top-K Probabilities for
        Efficient Language Model Distillation", arXiv:2602.20816, 2026.
    """
    log_q = ops.log_softmax(ops.cast(student_logits, "float32"), axis=-1)
    log_q_top = ops.take_along_axis(log_q, ops.cast(top.ids, "int32"), axis=-1)
    log_p = ops.cast(top.log_probs, "float32")
    log_p_tail = ops.cast(top.tail_log_mass, "float32")
    # Stored in float16 or bfloat16, the K+1 probabilities sum to 1 only up to
    # rounding (0.9989 for 64 draws): renormalized, the target is a distribution.
    log_total = ops.logsumexp(ops.concatenate([log_p, log_p_tail[..., None]], axis=-1), axis=-1)
    log_p, log_p_tail = log_p - log_total[..., None], log_p_tail - log_total
    p = ops.exp(log_p)  # 0 for a repeated draw (-inf), which then counts for nothing
    head = ops.sum(p * (ops.where(p > 0, log_p, 0.0) - log_q_top), axis=-1)
    log_q_tail = _log_one_minus(ops.logsumexp(log_q_top, axis=-1))
    p_tail = ops.exp(log_p_tail)
    tail = ops.where(p_tail > 0, p_tail * (log_p_tail - log_q_tail), 0.0)
    return head + tail


def _log_one_minus(log_x):
    """log(1 - x) from log x, floored at the smallest normal float32."""
    return ops.log(ops.maximum(-ops.expm1(ops.minimum(log_x, 0.0)), 1.1754944e-38))


def sequence_level_batches(teacher, prompts, preprocessor, batch_size=32,
                           sequence_length=None, stop_token_ids="end"):
    """Sequence-level KD: batches of the teacher's own continuations of prompts.

    One call turns prompts into a training set: the teacher generates every
    continuation once (its token ids are kept as they are, no text round
    trip), and `distiller.fit(batches)` then trains the student on those
    sequences — with the hard-label loss, as Kim & Rush's sequence-level
    distillation does, and with any token-level distillation loss too.
    Only continuation tokens count (`sample_weight` is 0 on the prompt and
    on padding). Decoding follows the teacher's sampler
    (`teacher.compile(sampler="greedy")`, or `"beam"` for their beam search).

    Args:
        teacher: a KerasHub `CausalLM` (with or without a preprocessor).
        prompts: a list of strings.
        preprocessor: the `CausalLMPreprocessor` that tokenizes for both
            models (e.g. the student's).
        batch_size: prompts generated at once, and the batch size returned.
        sequence_length: prompt plus continuation, in tokens; defaults to
            the preprocessor's.
        stop_token_ids: `"end"` (the tokenizer's end token), `None` (always
            fill `sequence_length`) or a tuple of ids.

    Returns:
        A `tf.data.Dataset` of `(x, y, sample_weight)` batches.

    Example:

    ```python
    batches = keras_kd.lm.sequence_level_batches(teacher_lm, prompts, student_lm.preprocessor)
    distiller.fit(batches, epochs=1)
    ```

    Reference:
        Kim & Rush, "Sequence-Level Knowledge Distillation", EMNLP 2016,
        arXiv:1606.07947.
    """
    prompts = _validation.check_texts(prompts, "prompts")
    batch_size = _validation.check_count(batch_size, "batch_size")
    sequence_length = sequence_length or preprocessor.sequence_length
    parts = []
    for start in range(0, len(prompts), batch_size):
        batch = list(prompts[start:start + batch_size])
        generated = _generate(teacher, preprocessor, batch, sequence_length, stop_token_ids)
        parts.append(_training_triple(generated["token_ids"], generated["padding_mask"],
                                      _prompt_lengths(preprocessor, batch, sequence_length)))
    merged = keras.tree.map_structure(lambda *a: np.concatenate(a), *parts)
    return tf.data.Dataset.from_tensor_slices(merged).batch(batch_size)


class OnPolicyBatches(keras.utils.PyDataset):
    """Training batches whose continuations are partly the student's own (GKD).

    For each batch of `(prompt, continuation)` pairs, a fraction `fraction`
    (λ) of the rows replace the given continuation with one the current
    student generates from the prompt; the Distiller's teacher then scores
    every sequence in its one forward and the Distiller's divergence trains
    the student on it. Only continuation tokens count (`sample_weight` is 0
    on the prompt and on padding). `fraction=0` is plain token-level KD on
    the given continuations.

    Cost: each batch adds one `student.generate` call for its
    `round(λ · batch)` on-policy rows, i.e. up to `sequence_length` student
    forward passes (with KerasHub's key/value cache), before the training
    step. It runs in `fit`'s input loop with the student's current weights.

    Args:
        student: the KerasHub `CausalLM` being trained.
        prompts: a list of prompt strings.
        continuations: a list of reference continuation strings (same
            length as `prompts`), used for the rows that are not on-policy.
        preprocessor: the `CausalLMPreprocessor` shared by the models.
        fraction: λ in [0, 1], the share of each batch generated by the
            student.
        batch_size: pairs per batch.
        sequence_length: tokens per sequence; defaults to the
            preprocessor's.
        seed: which rows are on-policy, per batch.
        stop_token_ids: as in `sequence_level_batches`.

    Example:

    ```python
    batches = keras_kd.lm.OnPolicyBatches(student_lm, prompts, answers,
                                          student_lm.preprocessor, fraction=0.5)
    distiller.fit(batches, epochs=1)
    ```

    Reference:
        Agarwal et al., "On-Policy Distillation of Language Models: Learning
        from Self-Generated Mistakes", ICLR 2024, arXiv:2306.13649.
    """

    def __init__(self, student, prompts, continuations, preprocessor, fraction=0.5,
                 batch_size=8, sequence_length=None, seed=0, stop_token_ids="end", **kwargs):
        super().__init__(**kwargs)
        prompts = _validation.check_texts(prompts, "prompts")
        continuations = _validation.check_texts(continuations, "continuations")
        if len(prompts) != len(continuations):
            raise ValueError(
                f"OnPolicyBatches needs one continuation per prompt, but "
                f"received {len(prompts)} prompts and {len(continuations)} "
                f"continuations."
            )
        self.student = student
        self.prompts, self.continuations = list(prompts), list(continuations)
        self.preprocessor = preprocessor
        self.fraction = _validation.check_number(fraction, "fraction", 0.0, 1.0)
        self.batch_size = _validation.check_count(batch_size, "batch_size")
        if self.fraction > 0 and round(self.fraction * self.batch_size) == 0:
            raise ValueError(
                f"fraction={self.fraction} of batch_size={self.batch_size} rounds to 0 "
                f"on-policy rows per batch: the student would generate nothing. Pass "
                f"batch_size >= {math.floor(0.5 / self.fraction) + 1}, or fraction=0 "
                f"for token-level KD on the given continuations."
            )
        self.sequence_length = sequence_length or preprocessor.sequence_length
        self.seed = seed
        self.stop_token_ids = stop_token_ids

    def __len__(self):
        return -(-len(self.prompts) // self.batch_size)

    def __getitem__(self, index):
        rows = slice(index * self.batch_size, (index + 1) * self.batch_size)
        prompts, continuations = self.prompts[rows], self.continuations[rows]
        given = self.preprocessor.generate_preprocess(
            [p + c for p, c in zip(prompts, continuations)], sequence_length=self.sequence_length)
        ids = np.array(given["token_ids"])
        mask = np.array(given["padding_mask"], bool)
        on_policy = self.on_policy_rows(index, len(prompts))
        if on_policy.size:
            generated = _generate(self.student, self.preprocessor, [prompts[i] for i in on_policy],
                                  self.sequence_length, self.stop_token_ids)
            ids[on_policy] = np.asarray(generated["token_ids"])
            mask[on_policy] = np.asarray(generated["padding_mask"], bool)
        return _training_triple(
            ids, mask, _prompt_lengths(self.preprocessor, prompts, self.sequence_length))

    def on_policy_rows(self, index, rows):
        """The rows of batch `index` that the student generates (seeded)."""
        count = int(round(self.fraction * rows))
        order = np.random.default_rng((self.seed, index)).permutation(rows)
        return np.sort(order[:count])


def _generate(model, preprocessor, prompts, sequence_length, stop_token_ids):
    """Token ids in, token ids out, whether or not `model` carries a
    preprocessor (`CausalLM.generate` would detokenize then)."""
    inputs = preprocessor.generate_preprocess(prompts, sequence_length=sequence_length)
    if stop_token_ids == "end":
        stop_token_ids = (preprocessor.tokenizer.end_token_id,)
    return model.make_generate_function()(inputs, stop_token_ids=stop_token_ids)


def _prompt_lengths(preprocessor, prompts, sequence_length):
    inputs = preprocessor.generate_preprocess(prompts, sequence_length=sequence_length)
    return np.asarray(inputs["padding_mask"]).sum(-1)


def _training_triple(ids, mask, prompt_lengths):
    """`(x, y, sample_weight)` for next-token training on whole sequences,
    weighting continuation tokens only."""
    ids, mask = np.asarray(ids), np.asarray(mask, bool)
    continuation = mask & (np.arange(ids.shape[1])[None, :] >= prompt_lengths[:, None])
    x = {"token_ids": ids[:, :-1], "padding_mask": mask[:, :-1]}
    return x, ids[:, 1:], continuation[:, 1:].astype("float32")


__all__ = [
    "OnPolicyBatches",
    "TopK",
    "check_vocabularies",
    "cut_logits",
    "holds_text",
    "preprocess_text",
    "preprocess_validation_text",
    "preprocessed",
    "sampled_targets",
    "sequence_level_batches",
    "text_preprocessor",
    "token_mask",
    "top_k_kl",
    "top_k_targets",
    "vocabulary",
]
