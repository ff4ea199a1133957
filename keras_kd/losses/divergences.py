"""Divergences between a teacher's and a student's predictions, as plain functions.

Each function takes log-probabilities `log_p` (teacher) and `log_q`
(student) of shape `(..., classes)` and returns its values unreduced: one
value per position (the class axis summed), or one value for the batch where
the method relates the samples of a batch to each other (DIST). Nothing is
softened, scaled by T², masked or averaged here: the loss classes of
`keras_kd.losses.logits` do that once, in `LogitsDistillation.divergence`.
All math is `keras.ops` in float32, in log space (no clipping).

Example:

```python
log_p = log_softmax_at(teacher_logits, 4.0)
log_q = log_softmax_at(student_logits, 4.0)
16.0 * keras.ops.mean(kl_divergence(log_p, log_q))  # Hinton et al.'s loss
```
"""

import functools

import numpy as np
from keras import ops


def log_softmax_at(logits, temperature):
    """Log-probabilities of `logits / temperature` over the last axis, in float32.

    Args:
        logits: shape `(..., classes)`, any float dtype.
        temperature: `T > 0`, a Python number or a scalar tensor/variable.

    Returns:
        A float32 tensor of the shape of `logits`.
    """
    logits = ops.cast(logits, "float32")
    return ops.log_softmax(logits / ops.cast(temperature, "float32"), axis=-1)


def standardize_logits(logits, epsilon=1e-7):
    """Z-scores logits over the last axis, per position (logit standardization).

    `(z - mean(z)) / (std(z) + epsilon)`, with the standard deviation over
    the classes computed as the authors' code does (PyTorch's `std`, which
    divides by `classes - 1`). Softmax at temperature `T` of the result is
    softmax of `z / (T std(z))`: each model's own spread sets its effective
    temperature, so the student matches the teacher's logit relations, not
    their range.

    Args:
        logits: shape `(..., classes)`, `classes >= 2`.
        epsilon: added to the standard deviation (the authors' 1e-7).

    Returns:
        A float32 tensor of the same shape.

    Reference:
        Sun, Ren, Li, Wang & Cao, "Logit Standardization in Knowledge
        Distillation", CVPR 2024, arXiv:2403.01427.
    """
    logits = ops.cast(logits, "float32")
    centered = logits - ops.mean(logits, axis=-1, keepdims=True)
    degrees = max(logits.shape[-1] - 1, 1)
    std = ops.sqrt(ops.sum(ops.square(centered), axis=-1, keepdims=True) / degrees)
    return centered / (std + epsilon)


def kl_divergence(log_p, log_q):
    """Forward KL, `KL(p ‖ q) = sum p (log p - log q)`, per position.

    Args:
        log_p: teacher log-probabilities, shape `(..., classes)`.
        log_q: student log-probabilities, same shape.

    Returns:
        A float32 tensor of shape `(...)`. Exact where probabilities
        underflow: no clipping, only log-probabilities.

    Reference:
        Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural
        Network", NeurIPS Deep Learning Workshop 2014, arXiv:1503.02531.
    """
    return ops.sum(ops.exp(log_p) * (log_p - log_q), axis=-1)


def reverse_kl(log_p, log_q):
    """Reverse KL, `KL(q ‖ p)` (student to teacher), per position: mode-seeking.

    Args:
        log_p: teacher log-probabilities, shape `(..., classes)`.
        log_q: student log-probabilities, same shape.

    Returns:
        A float32 tensor of shape `(...)`.

    Reference:
        Gu, Dong, Wei & Huang, "MiniLLM: Knowledge Distillation of Large
        Language Models", ICLR 2024, arXiv:2306.08543.
    """
    return kl_divergence(log_q, log_p)


def generalized_jsd(log_p, log_q, beta=0.5):
    """Generalized Jensen-Shannon divergence, per position.

    With the mixture `m = beta p + (1 - beta) q`:
    `beta KL(p ‖ m) + (1 - beta) KL(q ‖ m)`. The ends are the two KLs, as in
    TRL's `generalized_jsd_loss`: `beta=0` gives the forward `KL(p ‖ q)` and
    `beta=1` the reverse `KL(q ‖ p)` (the interpolation itself tends to 0 at
    both ends; the GKD paper names the ends the other way round and scales
    the interpolation). `beta=0.5` is the symmetric Jensen-Shannon
    divergence, bounded by `log 2`.

    Args:
        log_p: teacher log-probabilities, shape `(..., classes)`.
        log_q: student log-probabilities, same shape.
        beta: the teacher's weight in the mixture, in [0, 1] (a Python
            float or a scalar tensor for the interior).

    Returns:
        A float32 tensor of shape `(...)`.

    Reference:
        Agarwal et al., "On-Policy Distillation of Language Models: Learning
        from Self-Generated Mistakes", ICLR 2024, arXiv:2306.13649.
    """
    if isinstance(beta, (int, float)) and beta in (0, 1):
        return kl_divergence(log_p, log_q) if beta == 0 else reverse_kl(log_p, log_q)
    beta = ops.cast(beta, "float32")
    log_m = ops.logsumexp(
        ops.stack([log_p + ops.log(beta), log_q + ops.log(1.0 - beta)]), axis=0
    )
    return beta * kl_divergence(log_p, log_m) + (1.0 - beta) * kl_divergence(log_q, log_m)


def jensen_shannon(log_p, log_q):
    """Jensen-Shannon divergence (`generalized_jsd` at `beta=0.5`), per position.

    Args:
        log_p: teacher log-probabilities, shape `(..., classes)`.
        log_q: student log-probabilities, same shape.

    Returns:
        A float32 tensor of shape `(...)`, at most `log 2`.

    Reference:
        Agarwal et al., "On-Policy Distillation of Language Models: Learning
        from Self-Generated Mistakes", ICLR 2024, arXiv:2306.13649.
    """
    return generalized_jsd(log_p, log_q, 0.5)


def soft_cross_entropy(log_p, log_q):
    """Cross-entropy `H(p, q) = -sum p log q`, per position.

    Equals `kl_divergence` plus the teacher's entropy (a constant for the
    student), so it has the same gradients.

    Args:
        log_p: teacher log-probabilities, shape `(..., classes)`.
        log_q: student log-probabilities, same shape.

    Returns:
        A float32 tensor of shape `(...)`.
    """
    return -ops.sum(ops.exp(log_p) * log_q, axis=-1)


def logits_mse(teacher_logits, student_logits):
    """Mean squared difference of raw logits over the last axis, per position.

    The one function here on logits rather than log-probabilities: logit
    regression compares the logits themselves.

    Args:
        teacher_logits: shape `(..., classes)`.
        student_logits: same shape.

    Returns:
        A float32 tensor of shape `(...)`.

    Reference:
        Ba & Caruana, "Do Deep Nets Really Need to be Deep?", NeurIPS 2014,
        arXiv:1312.6184.
    """
    difference = ops.cast(teacher_logits, "float32") - ops.cast(student_logits, "float32")
    return ops.mean(ops.square(difference), axis=-1)


def dkd(log_p, log_q, labels, alpha=1.0, beta=8.0):
    """Decoupled KD, `alpha · TCKD + beta · NCKD`, per position.

    TCKD is the KL between the binary (target vs. rest) distributions of
    teacher and student, NCKD the KL between their distributions
    renormalized over the non-target classes; both in log space. As
    mdistiller's `dkd_loss` without its `T²` factor and batch mean.

    Args:
        log_p: teacher log-probabilities, shape `(..., classes)`.
        log_q: student log-probabilities, same shape.
        labels: the target class of each position, integers of shape `(...)`.
        alpha: weight of TCKD (a number or a scalar tensor).
        beta: weight of NCKD (a number or a scalar tensor).

    Returns:
        A float32 tensor of shape `(...)`.

    Reference:
        Zhao, Cui, Song, Qiu & Liang, "Decoupled Knowledge Distillation",
        CVPR 2022, arXiv:2203.08679.
    """
    target = ops.cast(ops.one_hot(labels, log_p.shape[-1]), "bool")

    def binary(log_probs):  # log [p(target), p(rest)]
        log_target = ops.sum(ops.where(target, log_probs, 0.0), axis=-1)
        log_rest = ops.logsumexp(ops.where(target, -np.inf, log_probs), axis=-1)
        return ops.stack([log_target, log_rest], axis=-1)

    def kl(log_a, log_b, mask=None):  # per position
        terms = ops.exp(log_a) * (log_a - log_b)
        if mask is not None:
            terms = ops.where(mask, 0.0, terms)
        return ops.sum(terms, axis=-1)

    def non_target(log_probs):  # log-probabilities renormalized over the rest
        rest = ops.where(target, -np.inf, log_probs)
        return rest - ops.logsumexp(rest, axis=-1, keepdims=True)

    tckd = kl(binary(log_p), binary(log_q))
    nckd = kl(non_target(log_p), non_target(log_q), mask=target)
    return ops.cast(alpha, "float32") * tckd + ops.cast(beta, "float32") * nckd


def _pearson(a, b, axis, epsilon=1e-8):
    """Pearson correlation of `a` and `b` along `axis` (authors' epsilon)."""
    a = a - ops.mean(a, axis=axis, keepdims=True)
    b = b - ops.mean(b, axis=axis, keepdims=True)
    norms = ops.sqrt(ops.sum(a * a, axis=axis)) * ops.sqrt(ops.sum(b * b, axis=axis))
    return ops.sum(a * b, axis=axis) / (norms + epsilon)


def dist(log_p, log_q, beta=1.0, gamma=1.0):
    """DIST: inter- and intra-class Pearson relations, one value for the batch.

    With `p`, `q` the probabilities as `(positions, classes)` matrices:
    inter-class = `1 - mean_i pearson(p_i, q_i)` (each sample's class
    ranking), intra-class = the same over the transposed matrices (each
    class's ranking of the batch's samples). The intra-class term relates
    the samples of the batch, so there is no value per position.

    Args:
        log_p: teacher log-probabilities, shape `(..., classes)`.
        log_q: student log-probabilities, same shape.
        beta: weight of the inter-class relation.
        gamma: weight of the intra-class relation.

    Returns:
        A float32 scalar, `beta · inter + gamma · intra`.

    Reference:
        Huang, You, Wang, Qian & Xu, "Knowledge Distillation from A Stronger
        Teacher", NeurIPS 2022, arXiv:2205.10536.
    """
    classes = log_p.shape[-1]
    p = ops.reshape(ops.exp(log_p), (-1, classes))
    q = ops.reshape(ops.exp(log_q), (-1, classes))
    inter = 1.0 - ops.mean(_pearson(p, q, axis=1))
    intra = 1.0 - ops.mean(_pearson(p, q, axis=0))
    return ops.cast(beta, "float32") * inter + ops.cast(gamma, "float32") * intra


def mlkd(teacher_logits, student_logits, temperatures=(2.0, 3.0, 4.0, 5.0, 6.0)):
    """Multi-level logit distillation, one value for the batch.

    Takes logits, as it softens them at several temperatures. With
    `p = softmax(t/T)`, `q = softmax(s/T)` as `(B, C)` matrices, summed over
    the temperatures `T`: the instance level `T² · mean_i KL(p_i ‖ q_i)`,
    the batch level `sum((p pᵀ - q qᵀ)²) / B` and the class level
    `sum((pᵀ p - qᵀ q)²) / C` (the authors' `kd_loss`, `bc_loss` and
    `cc_loss` on one view, without their confidence masks).

    Args:
        teacher_logits: shape `(..., classes)`, flattened to `(B, C)`.
        student_logits: same shape.
        temperatures: the temperatures `T > 0` to sum over.

    Returns:
        A float32 scalar.

    Reference:
        Jin, Wang & Lin, "Multi-Level Logit Distillation", CVPR 2023.
    """
    classes = teacher_logits.shape[-1]
    teacher = ops.reshape(ops.cast(teacher_logits, "float32"), (-1, classes))
    student = ops.reshape(ops.cast(student_logits, "float32"), (-1, classes))
    batch = ops.cast(ops.shape(teacher)[0], "float32")
    total = []
    for temperature in temperatures:
        log_p = log_softmax_at(teacher, temperature)
        log_q = log_softmax_at(student, temperature)
        p, q = ops.exp(log_p), ops.exp(log_q)
        instance = ops.mean(kl_divergence(log_p, log_q)) * temperature**2
        samples = ops.sum(ops.square(p @ ops.transpose(p) - q @ ops.transpose(q))) / batch
        class_level = ops.sum(ops.square(ops.transpose(p) @ p - ops.transpose(q) @ q)) / classes
        total.append(instance + samples + class_level)
    return functools.reduce(ops.add, total)


__all__ = [
    "dist",
    "dkd",
    "generalized_jsd",
    "jensen_shannon",
    "kl_divergence",
    "log_softmax_at",
    "logits_mse",
    "mlkd",
    "reverse_kl",
    "soft_cross_entropy",
    "standardize_logits",
]
