"""Language models: masks of real tokens, and raw text through a preprocessor.

KerasHub's causal-LM preprocessors yield `(x, y, sample_weight)` batches with
`x = {"token_ids", "padding_mask"}` and `sample_weight` the mask of real
next-token targets; the Distiller averages every token-level term over the
real tokens only (`keras_kd.losses.base.masked_mean`).
"""

import keras
import numpy as np
import tensorflow as tf

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
