"""Language models: masks of real tokens, and raw text through a preprocessor.

KerasHub's causal-LM preprocessors yield `(x, y, sample_weight)` batches with
`x = {"token_ids", "padding_mask"}` and `sample_weight` the mask of real
next-token targets; the Distiller averages every token-level term over the
real tokens only (`keras_kd.losses.base.masked_mean`).
"""

import typing

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_kd import _keras_compat


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


def vocabulary(model):
    """The token vocabulary of a KerasHub model's tokenizer, or `None`."""
    tokenizer = getattr(getattr(model, "preprocessor", None), "tokenizer", None)
    if tokenizer is None or not hasattr(tokenizer, "get_vocabulary"):
        return None
    return list(tokenizer.get_vocabulary())


class TopK(typing.NamedTuple):
    """A teacher's next-token distribution kept as its K most likely tokens.

    Attributes:
        log_probs: `(..., K)` log-probabilities of those tokens (at T=1),
            stored in float16 or bfloat16 (or float32).
        ids: `(..., K)` int32 token ids, most likely first.
        tail_log_mass: `(...)` log of the probability of every other token
            (`-inf` when the K tokens hold it all).
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
    log_p = ops.log_softmax(ops.cast(logits, "float32"), axis=-1)
    log_probs, ids = tf.math.top_k(log_p, k=k)
    if k >= logits.shape[-1]:  # the whole vocabulary: no tail, not float32 noise
        tail = ops.full(ops.shape(log_probs)[:-1], -np.inf)
    else:
        tail = _log_one_minus(ops.logsumexp(log_probs, axis=-1))
    return TopK(ops.cast(log_probs, dtype), ops.cast(ids, "int32"), ops.cast(tail, dtype))


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
    head = ops.sum(ops.exp(log_p) * (log_p - log_q_top), axis=-1)
    log_p_tail = ops.cast(top.tail_log_mass, "float32")
    log_q_tail = _log_one_minus(ops.logsumexp(log_q_top, axis=-1))
    p_tail = ops.exp(log_p_tail)
    tail = ops.where(p_tail > 0, p_tail * (log_p_tail - log_q_tail), 0.0)
    return head + tail


def _log_one_minus(log_x):
    """log(1 - x) from log x, floored at the smallest normal float32."""
    return ops.log(ops.maximum(-ops.expm1(ops.minimum(log_x, 0.0)), 1.1754944e-38))
