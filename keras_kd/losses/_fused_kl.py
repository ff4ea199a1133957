"""The forward KL and the hard-label cross-entropy with hand-written gradients.

A language model's logits are `(batch, sequence, vocabulary)`; autodiff of
the KL and the cross-entropy keeps several buffers of that size alive per
step. The functions here compute the same values a chunk of positions at a
time and write the gradients in the logits' own buffers:
`_forward_kl_fused` (the default loss of `LogitsDistillation`) and
`forward_kl_and_cross_entropy` (the KL and the hard-label loss in one
backward pass, which the Distiller uses for language models). The T² factor
is part of the kernel: its gradient `T (softmax(s/T) - softmax(t/T))` is
written for the scaled value.
"""

import tensorflow as tf
from keras import ops

_CHUNK_ELEMENTS = 2**20
"""Logit elements (4 MiB in float32) per chunk of positions in
`_chunked_positions`: each intermediate of a chunk takes about this much."""


def _chunked_positions(function, tensors, outputs=1):
    """Per-position values of `function`, a chunk of positions at a time.

    For outputs with a sequence axis (language models), the leading
    (batch, sequence) axes of `tensors` are flattened into positions and
    `function` runs on chunks of `_CHUNK_ELEMENTS // vocabulary` positions:
    its `(positions, vocabulary)` intermediates take a chunk's size, not a
    `(batch, sequence, vocabulary)` buffer each. A chunk is a slice along
    the first axis, which TensorFlow hands over without a copy. Every chunk
    has the same size (the last one starts earlier and overlaps the one
    before), so the loop also compiles with XLA.

    Args:
        function: `function(*chunks)` returns a tuple of `outputs`
            `(positions,)` float32 values.
        tensors: `(batch, sequence, ...)` tensors; without a sequence axis
            (2-D logits), `function` is called once on them as they are.
        outputs: how many values `function` returns.

    Returns:
        The tuple of `(batch, sequence)` values.
    """
    if len(tensors[0].shape) < 3:
        return function(*tensors)
    leading = tf.shape(tensors[0])[:2]
    rows = [tf.reshape(x, tf.concat([[-1], tf.shape(x)[2:]], 0)) for x in tensors]
    count = tf.shape(rows[0])[0]
    size = tf.minimum(count, tf.maximum(1, _CHUNK_ELEMENTS // tf.shape(rows[0])[-1]))
    chunks = (count + size - 1) // size
    starts = tf.minimum(tf.range(chunks) * size, count - size)
    arrays = tuple(tf.TensorArray(tf.float32, size=chunks) for _ in range(outputs))

    def body(i, arrays):
        chunk = [x[starts[i]:starts[i] + size] for x in rows]
        return i + 1, tuple(a.write(i, v) for a, v in zip(arrays, function(*chunk)))

    # One chunk at a time: TensorFlow would otherwise run up to 10 at once.
    _, arrays = tf.while_loop(lambda i, _: i < chunks, body, (tf.constant(0), arrays),
                              parallel_iterations=1)
    # Position r was computed in chunk min(r // size, chunks - 1), at offset r - its start.
    positions = tf.range(count)
    chunk_of = tf.minimum(positions // size, chunks - 1)
    taken = chunk_of * size + positions - tf.gather(starts, chunk_of)
    return tuple(tf.reshape(tf.gather(a.concat(), taken), leading) for a in arrays)


def _forward_kl_values(teacher, student, temperature):
    log_p = ops.log_softmax(ops.cast(teacher, "float32") / temperature, axis=-1)
    log_q = ops.log_softmax(ops.cast(student, "float32") / temperature, axis=-1)
    return ops.sum(ops.exp(log_p) * (log_p - log_q), axis=-1) * ops.square(temperature)


def _forward_kl_gradient(teacher, student, temperature, upstream):
    p = ops.softmax(ops.cast(teacher, "float32") / temperature, axis=-1)
    q = ops.softmax(ops.cast(student, "float32") / temperature, axis=-1)
    return (q - p) * (upstream[..., None] * temperature)


def _softmax_minus_one_hot(logits, labels):
    """`softmax(logits) - one_hot(labels)` (the gradient of the cross-entropy),
    from TensorFlow's fused kernel, which writes it in the logits' buffer
    when nothing else needs them."""
    vocabulary = tf.shape(logits)[-1]
    _, gradient = tf.raw_ops.SparseSoftmaxCrossEntropyWithLogits(
        features=tf.reshape(logits, [-1, vocabulary]), labels=tf.reshape(labels, [-1]))
    return tf.reshape(gradient, tf.shape(logits))


def _forward_kl_fused(teacher_logits, student_logits, temperature, labels=None):
    """`T² · KL(softmax(t/T) ‖ softmax(s/T))` per position, computed to spare memory.

    Same value; the gradient with respect to the student's logits is
    `T (softmax(s/T) - softmax(t/T))` per position. Nothing but the two
    models' logits is kept for the backward pass; the values are computed
    a chunk of positions at a time (`_chunked_positions`), and the gradient
    waits for the gradient flowing in (TensorFlow would otherwise run it
    during the forward pass, beside everything else), then reuses the two
    logits' buffers: two `(batch, sequence, vocabulary)` buffers in all.
    """
    temperature = tf.cast(tf.convert_to_tensor(temperature), "float32")  # a variable: read once, here
    teacher = ops.stop_gradient(teacher_logits)  # a constant of the step, not an input

    @tf.custom_gradient
    def fused(student):
        def gradient(upstream):
            with tf.control_dependencies([upstream]):
                return ops.cast(_forward_kl_gradient(teacher, student, temperature, upstream), student.dtype)

        (values,) = _chunked_positions(lambda t, s: (_forward_kl_values(t, s, temperature),), (teacher, student))
        return values, gradient

    return fused(student_logits)


def forward_kl_and_cross_entropy(teacher_logits, student_logits, temperature, labels):
    """Per-position forward KL and hard-label cross-entropy, with one gradient.

    A language model's step needs both terms, and each one's gradient with
    respect to the student's logits is a `(batch, sequence, vocabulary)`
    tensor; computed apart, the two gradients and their sum take three such
    buffers besides the logits. Here the backward pass computes
    `u_kl T (softmax(s/T) - softmax(t/T)) + u_ce (softmax(s) - onehot(y))`,
    where `u_kl`, `u_ce` are the gradients flowing into each term's values,
    in the logits' own buffers: at `T = 1` as
    `(u_kl + u_ce) (softmax(s) - onehot(y)) - u_kl (softmax(t) - onehot(y))`,
    two buffers in all (the one-hot terms cancel up to float32 rounding,
    ~1e-7 absolute at the label); at other temperatures `softmax(s/T)`
    and `softmax(s)` both need `s`, and one more buffer. The values equal
    `_forward_kl_fused` and
    `keras.losses.sparse_categorical_crossentropy(y, s, from_logits=True)`,
    computed a chunk of positions at a time (`_chunked_positions`).

    Args:
        teacher_logits: `(batch, sequence, vocabulary)`.
        student_logits: the same shape.
        temperature: the KL's softmax temperature (the cross-entropy's is 1).
        labels: `(batch, sequence)` integer token ids.

    Returns:
        `(kl, cross_entropy)`, each `(batch, sequence)` float32: the KL times
        T², and the negative log-likelihood of the labels.
    """
    if len(student_logits.shape) != 3:
        raise ValueError(
            f"forward_kl_and_cross_entropy() takes token-level logits "
            f"(batch, sequence, vocabulary), but received the shape "
            f"{tuple(student_logits.shape)}.")
    temperature = tf.cast(tf.convert_to_tensor(temperature), "float32")  # a variable: read once, here
    teacher = ops.stop_gradient(teacher_logits)
    labels = ops.cast(labels, "int32")

    def values(t, s, y):
        log_q = ops.log_softmax(ops.cast(s, "float32"), axis=-1)
        nll = -ops.take_along_axis(log_q, y[..., None], axis=-1)[..., 0]
        return _forward_kl_values(t, s, temperature), nll

    @tf.custom_gradient
    def fused(student):
        def gradient(u_kl, u_ce):
            # Not before the gradient flows in: see _forward_kl_fused.
            with tf.control_dependencies([u_kl, u_ce]):
                t, s = ops.cast(teacher, "float32"), ops.cast(student, "float32")

                def at_one():
                    kl_part = _softmax_minus_one_hot(t, labels) * -u_kl[..., None]
                    with tf.control_dependencies([kl_part]):  # then s's buffer is free to reuse
                        return kl_part + _softmax_minus_one_hot(s, labels) * (u_kl + u_ce)[..., None]

                def at_other():
                    kl_part = _forward_kl_gradient(t, s, temperature, u_kl)
                    with tf.control_dependencies([kl_part]):
                        return kl_part + _softmax_minus_one_hot(s, labels) * u_ce[..., None]

                student_gradient = tf.cond(ops.equal(temperature, 1.0), at_one, at_other)
            return ops.cast(student_gradient, student.dtype)

        return _chunked_positions(values, (teacher, student, labels), outputs=2), gradient

    return fused(student_logits)


__all__ = ["forward_kl_and_cross_entropy"]
