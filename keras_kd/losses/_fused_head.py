"""A fused output head: distil a language model without its full logits.

A causal LM's logits are its final hidden states times an output matrix,
`(batch, sequence, vocabulary)`: at Gemma's 256k vocabulary, 4 × 512 tokens
of float32 logits are 2 GB per copy. Here the two models stop at their final
hidden states (`Head.hidden`) and `fused_head_values` computes, a chunk of
positions at a time, both models' logits, the distillation term's
per-position values, the hard-label cross-entropy and the top-1 agreement;
its gradient recomputes each chunk's logits and accumulates the gradients
with respect to the student's hidden states and output weights. No
`(batch, sequence, vocabulary)` tensor exists in the step.

The per-position values are the unfused ones (same ops on the same
numbers): the masked means, their global token count across replicas and
the hard-label loss's reduction are applied to them as before, outside.

Reference:
    Hsu et al., "Liger Kernel: Efficient Triton Kernels for LLM Training"
    (fused linear cross-entropy / JSD), arXiv:2410.10989, 2024. Wijmans et
    al., "Cut Your Losses in Large-Vocabulary Language Models" (Cut
    Cross-Entropy), ICLR 2025, arXiv:2411.09009.
"""

import keras
import tensorflow as tf
from keras import ops

from keras_kd import _keras_compat

CHUNK_ELEMENTS = 2**22
"""Logit elements per chunk (16 MiB in float32, per buffer): at a 32k
vocabulary 128 positions, at 256k 16. Each chunk holds a few buffers of
this size (both models' logits, their softmaxes, the logits' gradient);
the chunk's matrix products stay large enough to run at full speed."""


class Head:
    """How a model's logits come from its final hidden states.

    Built by `head_of`. The projection is the model's last operation: a
    KerasHub `ReversibleEmbedding` called with `reverse=True` (tied or
    untied output matrix, the optional `logit_soft_cap`) or a `Dense` (linear
    or softmax; the logits are its input of the softmax).

    Attributes:
        hidden: a `keras.Model` from the model's inputs to the hidden states
            the projection reads (its layers are the model's own).
        layer: the projection layer.
    """

    def __init__(self, hidden, layer):
        self.hidden = hidden
        self.layer = layer

    @property
    def outputs_logits(self):
        """Whether the model's output is its logits (not a softmax of them)."""
        return getattr(self.layer, "activation", None) is not keras.activations.softmax

    def weights(self):
        """The projection's variables, in the order `logits` reads them."""
        layer = self.layer
        if isinstance(layer, keras.layers.Dense):
            return [layer.kernel] + ([layer.bias] if layer.use_bias else [])
        return [layer.embeddings if layer.tie_weights else layer.reverse_embeddings]

    def logits(self, hidden, weights):
        """The projection of `(positions, hidden)` states with `weights`
        (tensors read from `self.weights()`), as the layer computes it
        (Keras 3.15 `Dense.call`, `ReversibleEmbedding.call(reverse=True)`):
        in the layer's compute dtype, soft-capped where the layer is."""
        layer = self.layer
        dtype = layer.compute_dtype
        hidden = ops.cast(hidden, dtype)
        weights = [ops.cast(w, dtype) for w in weights]
        if isinstance(layer, keras.layers.Dense):
            logits = ops.matmul(hidden, weights[0])
            return ops.add(logits, weights[1]) if layer.use_bias else logits
        kernel = weights[0]
        if layer.reverse_dtype is not None:
            hidden, kernel = ops.cast(hidden, layer.reverse_dtype), ops.cast(kernel, layer.reverse_dtype)
        # transpose_b: the tied matrix is (vocabulary, hidden); no transposed copy.
        logits = tf.linalg.matmul(hidden, kernel, transpose_b=layer.tie_weights)
        if layer.logit_soft_cap is not None:
            cap = layer.logit_soft_cap
            logits = ops.multiply(ops.tanh(ops.divide(logits, cap)), cap)
        return logits


def head_of(model):
    """The `Head` of a model whose logits are a projection keras_kd can see.

    Args:
        model: a Functional `keras.Model` (KerasHub `GPT2CausalLM`,
            `GemmaCausalLM`, `LlamaCausalLM`, ...; a model ending in a
            `Dense`), with one output.

    Returns:
        `(head, None)`, or `(None, reason)` with a sentence saying why the
        model's logits are not a projection the fused head can compute.
    """
    outputs = _symbolic_outputs(model)
    if outputs is None or len(outputs) != 1:
        return None, "it has no Functional graph with one output"
    operation, node_index, _ = _keras_compat.keras_history(outputs[0])
    args, kwargs = _keras_compat.call_arguments(operation, node_index)
    if getattr(operation, "quantization_mode", None) or getattr(operation, "lora_enabled", False):
        return None, f"its output layer '{operation.name}' is quantized or has LoRA"
    known = next((base for base in (*_reversible_embeddings(), keras.layers.Dense)
                  if isinstance(operation, base)), None)
    if known is not None and type(operation).call is not known.call:
        # `Head.logits` computes what the Keras layer's own `call` does.
        return None, (f"its output layer '{operation.name}' ({type(operation).__name__}) "
                      f"has a `call` of its own")
    if getattr(operation, "activity_regularizer", None) is not None:
        return None, f"its output layer '{operation.name}' has an activity regularizer on the logits"
    if isinstance(operation, _reversible_embeddings()):
        if not kwargs.get("reverse", args[1] if len(args) > 1 else False):
            return None, f"its output layer '{operation.name}' is an embedding lookup"
    elif isinstance(operation, keras.layers.Dense):
        if operation.activation not in (keras.activations.linear, keras.activations.softmax):
            return None, (f"its output layer '{operation.name}' applies the activation "
                          f"{operation.activation.__name__}")
    else:
        return None, f"its output layer '{operation.name}' is a {type(operation).__name__}"
    hidden = args[0] if args else kwargs["inputs"]
    if not isinstance(hidden, keras.KerasTensor) or len(hidden.shape) != 3:
        return None, "its output is not token-level (batch, sequence, vocabulary)"
    return Head(keras.Model(model.input, hidden, name=f"{model.name}_hidden"), operation), None


def _symbolic_outputs(model):
    try:
        outputs = model.outputs
    except (AttributeError, ValueError):
        return None
    return list(outputs) if outputs else None


def fused_head_values(per_position, teacher_head, student_head, teacher_hidden,
                      student_hidden, labels=None, teacher_top1=None, statistics=None,
                      statistic_labels=None):
    """Per-position distillation values, cross-entropy and top-1 agreement,
    a chunk of positions at a time, from the two models' hidden states.

    Equal to `per_position(t, s)`, the sparse cross-entropy of `labels`
    under `s` and `argmax t == argmax s` with `t`, `s` the two models'
    `(batch, sequence, vocabulary)` logits, and with the same gradients
    with respect to `student_hidden` and the student's output weights
    (the teacher's side gets none); none of these logits is ever held
    whole. The gradient recomputes each chunk's logits (twice the
    projections' arithmetic, as Liger Kernel and Cut Cross-Entropy do)
    rather than keep them.

    Args:
        per_position: `fn(teacher_logits, student_logits)` -> `(positions,)`
            float32 values; each position's value must depend on that
            position's logits only.
        teacher_head: the teacher's `Head`, or `None` when `teacher_hidden`
            holds the teacher's outputs per position already (e.g. a
            top-K cache): then `per_position` receives their chunks.
        student_head: the student's `Head`.
        teacher_hidden: `(batch, sequence, teacher hidden)` states, or
            (without `teacher_head`) a structure of `(batch, sequence,
            ...)` tensors.
        student_hidden: `(batch, sequence, student hidden)` states.
        labels: `(batch, sequence)` token ids, or `None` (no cross-entropy).
        teacher_top1: `fn(teacher chunk)` -> `(positions,)` the teacher's
            top-1 token ids; by default the argmax of its logits.
        statistics: `(fn, count)`: `fn(teacher chunk, student logits,
            label ids or None)` -> a list of `count` `(positions,)`
            tensors (the fidelity metrics' per-position values), or `None`.
        statistic_labels: `(batch, sequence)` token ids `statistics`
            receives a chunk of, or `None`.

    Returns:
        `(values, cross_entropy, agreement, statistics)`: `(batch,
        sequence)` float32 each, and a list of them; `cross_entropy` is
        `None` without `labels`. `agreement` (1.0 where the two models'
        top-1 tokens agree) and the statistics have no gradient.
    """
    leading = tf.shape(student_hidden)[:2]
    teacher_rows = keras.tree.map_structure(
        lambda t: ops.stop_gradient(tf.reshape(t, tf.concat([[-1], tf.shape(t)[2:]], 0))), teacher_hidden)
    teacher_weights = ([] if teacher_head is None else
                       [ops.stop_gradient(ops.convert_to_tensor(w)) for w in teacher_head.weights()])
    teacher_top1 = teacher_top1 or (lambda logits: tf.argmax(logits, axis=-1, output_type="int32"))
    student_weights = [ops.convert_to_tensor(w) for w in student_head.weights()]
    with_labels = labels is not None
    label_rows = tf.reshape(ops.cast(labels, "int32"), [-1]) if with_labels else None
    statistic_rows = (None if statistic_labels is None
                      else tf.reshape(ops.cast(statistic_labels, "int32"), [-1]))
    count = tf.shape(_rows(student_hidden))[0]
    classes = vocabulary(student_head)
    size = tf.minimum(count, max(1, CHUNK_ELEMENTS // classes))
    chunks = (count + size - 1) // size
    # Every chunk has the same size (XLA needs static shapes): the last one
    # starts earlier and overlaps the one before; its repeated positions
    # are dropped from the values and weighted 0 in the gradient.
    starts = tf.minimum(tf.range(chunks) * size, count - size)

    def chunk_values(i, rows, weights):
        """A chunk's values (and the two models' logits) from its student rows."""
        start = starts[i]
        teacher_logits = keras.tree.map_structure(lambda t: _chunk(t, start, size), teacher_rows)
        if teacher_head is not None:
            teacher_logits = teacher_head.logits(teacher_logits, teacher_weights)
        student_logits = student_head.logits(rows, weights)
        values = [ops.cast(per_position(teacher_logits, student_logits), "float32")]
        if with_labels:
            # TensorFlow's fused kernel, as keras.losses.sparse_categorical_crossentropy.
            values.append(tf.nn.sparse_softmax_cross_entropy_with_logits(
                _chunk(label_rows, start, size), ops.cast(student_logits, "float32")))
        return values, teacher_logits, student_logits

    def chunk_statistics(i, teacher_logits, student_logits):
        """The chunk's top-1 agreement and `statistics`, float32 (outputs of the
        forward pass that `gradient` below gives no gradient)."""
        same = ops.cast(ops.cast(teacher_top1(teacher_logits), "int32")
                        == tf.argmax(student_logits, axis=-1, output_type="int32"), "float32")
        if statistics is None:
            return [same]
        chunk_labels = None if statistic_rows is None else _chunk(statistic_rows, starts[i], size)
        return [same] + [ops.cast(v, "float32")
                         for v in statistics[0](teacher_logits, student_logits, chunk_labels)]

    differentiable = 2 if with_labels else 1
    extra = 1 + (statistics[1] if statistics else 0)

    @tf.custom_gradient
    def fused(student_rows, *weights):
        arrays = tuple(tf.TensorArray(tf.float32, size=chunks) for _ in range(differentiable + extra))

        def body(i, arrays):
            values, teacher_logits, student_logits = chunk_values(
                i, _chunk(student_rows, starts[i], size), weights)
            values = values + chunk_statistics(i, teacher_logits, student_logits)
            return i + 1, tuple(a.write(i, v) for a, v in zip(arrays, values))

        # One chunk at a time: TensorFlow would otherwise run up to 10 at once.
        _, arrays = tf.while_loop(lambda i, _: i < chunks, body, (tf.constant(0), arrays),
                                  parallel_iterations=1)
        results = tuple(tf.reshape(_in_order(a.concat(), count, size, chunks, starts), leading)
                        for a in arrays)

        def gradient(*upstream):
            # Not before the gradient flows in (TensorFlow would otherwise
            # run the loop in the forward pass, beside everything else).
            upstream = [tf.zeros(leading) if u is None else u for u in upstream[:differentiable]]
            with tf.control_dependencies(upstream):
                flat = [tf.reshape(u, [-1]) for u in upstream]
                hidden_grads = tf.TensorArray(student_rows.dtype, size=chunks)
                weight_grads = [tf.zeros_like(w) for w in weights]

                def backward(i, hidden_grads, weight_grads):
                    start = starts[i]
                    fresh = ops.cast(start + tf.range(size) >= i * size, "float32")
                    rows = _chunk(student_rows, start, size)
                    with tf.GradientTape() as tape:
                        tape.watch([rows, *weights])
                        values, _, _ = chunk_values(i, rows, weights)
                    grads = tape.gradient(values, [rows, *weights], output_gradients=[
                        _chunk(u, start, size) * fresh for u in flat])
                    return (i + 1, hidden_grads.write(i, grads[0]),
                            [a + g for a, g in zip(weight_grads, grads[1:])])

                _, hidden_grads, weight_grads = tf.while_loop(
                    lambda i, *_: i < chunks, backward, (tf.constant(0), hidden_grads, weight_grads),
                    parallel_iterations=1)
                hidden_grad = _in_order(hidden_grads.concat(), count, size, chunks, starts)
            return (hidden_grad, *weight_grads)

        return results, gradient

    results = fused(_rows(student_hidden), *student_weights)
    values, cross_entropy = results[0], results[1] if with_labels else None
    agreement, *measured = [ops.stop_gradient(r) for r in results[differentiable:]]
    return values, cross_entropy, agreement, measured


def _chunk(tensor, start, size):
    """Rows `start` to `start + size` of `tensor`: a slice of static size,
    which XLA compiles (and differentiates) with a dynamic start."""
    rank = len(tensor.shape)
    return tf.slice(tensor, tf.stack([start] + [0] * (rank - 1)), [size] + [-1] * (rank - 1))


def _rows(hidden):
    """`(batch, sequence, features)` -> `(positions, features)`."""
    return tf.reshape(hidden, [-1, tf.shape(hidden)[-1]])


def vocabulary(head):
    """The number of logits a `Head` computes."""
    layer = head.layer
    if isinstance(layer, keras.layers.Dense):
        return int(layer.units)
    return int(layer.input_dim)


def _in_order(concatenated, count, size, chunks, starts):
    """The `count` rows of chunks written one after the other, with the
    last chunk's overlap dropped: position r was computed in chunk
    `min(r // size, chunks - 1)`, at offset r minus that chunk's start."""
    positions = tf.range(count)
    chunk_of = tf.minimum(positions // size, chunks - 1)
    return tf.gather(concatenated, chunk_of * size + positions - tf.gather(starts, chunk_of))



def _reversible_embeddings():
    """The `ReversibleEmbedding` classes a model may hold: Keras's, and, with
    a KerasHub older than the move of the layer into Keras (0.25 beside
    Keras 3.12), KerasHub's own class, which computes the same projection
    (`call(reverse=True)`: matmul with the tied or untied matrix, then the
    soft-cap). KerasHub is only looked at when a model already imported it."""
    import sys

    classes = [keras.layers.ReversibleEmbedding]
    keras_hub = sys.modules.get("keras_hub")
    hub_class = getattr(getattr(keras_hub, "layers", None), "ReversibleEmbedding", None)
    if hub_class is not None and hub_class not in classes:
        classes.append(hub_class)
    return tuple(classes)

__all__ = ["CHUNK_ELEMENTS", "Head", "fused_head_values", "head_of", "vocabulary"]
