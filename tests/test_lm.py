"""Token-level distillation of KerasHub causal LMs: accepted as they are,
masked, replica-correct, from raw text through the student's preprocessor."""

import warnings

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf

import keras_kd
from keras_kd import cache, losses
from keras_kd.losses import logits as logit_losses
from tests.helpers import numpy_kl, numpy_log_softmax, round_trip

VOCABULARY, LENGTH = 64, 8


def causal_lm(hidden, layers, name, vocabulary=VOCABULARY, preprocessor=None, seed=0):
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=vocabulary, num_layers=layers, num_heads=2, hidden_dim=hidden,
        intermediate_dim=2 * hidden, max_sequence_length=16, dropout=0.0, name=f"{name}_backbone",
    )
    return keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=preprocessor, name=name)


def token_batch(lengths, seed=0, vocabulary=VOCABULARY):
    """A right-padded batch as KerasHub preprocessors lay it out: x, y, sample_weight."""
    rng = np.random.default_rng(seed)
    mask = (np.arange(LENGTH)[None, :] < np.asarray(lengths)[:, None]).astype("int32")
    ids = rng.integers(1, vocabulary, size=(len(lengths), LENGTH)).astype("int32") * mask
    y = np.roll(ids, -1, axis=1) * np.roll(mask, -1, axis=1)
    weight = np.roll(mask, -1, axis=1).astype("float32")
    weight[:, -1] = 0.0
    return {"token_ids": ids, "padding_mask": mask}, y, weight


def distiller_for(loss=None, student_loss_weight=0.0, **kwargs):
    teacher, student = causal_lm(32, 2, "teacher", seed=1), causal_lm(16, 1, "student", seed=2)
    distiller = keras_kd.Distiller(teacher, student, loss or keras_kd.LogitsDistillation(2.0),
                                   student_loss_weight=student_loss_weight, **kwargs)
    distiller.compile(optimizer=keras.optimizers.SGD(0.1),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return distiller


def test_kerashub_causal_lms_are_accepted_as_they_are_and_the_kl_is_a_masked_mean():
    distiller = distiller_for()
    x, y, weight = token_batch([8, 5, 3, 1])
    logs = distiller.test_on_batch(x, y, weight, return_dict=True)
    expected = numpy_kl(distiller.teacher(x), distiller.student(x), 2.0, mask=weight)
    assert logs["distillation_loss"] == pytest.approx(expected, rel=1e-4)
    unmasked = numpy_kl(distiller.teacher(x), distiller.student(x), 2.0)
    assert abs(unmasked - expected) > 1e-3 * expected  # padding would change it
    agreement = (np.argmax(distiller.teacher(x), -1) == np.argmax(distiller.student(x), -1))
    assert logs["teacher_agreement"] == pytest.approx((agreement * weight).sum() / weight.sum())
    history = distiller.fit(x, y, sample_weight=weight, batch_size=4, epochs=1, verbose=0).history
    assert np.isfinite(history["loss"][0])


def test_what_sits_at_padded_positions_changes_nothing():
    distiller = distiller_for(
        [keras_kd.LogitsDistillation(2.0),
         keras_kd.FeatureDistillation(teacher_layer_name="teacher_backbone/transformer_layer_1",
                                      student_layer_name="student_backbone/transformer_layer_0",
                                      projection="auto")])
    x, y, weight = token_batch([8, 5, 3, 2])
    garbage = dict(x, token_ids=np.where(x["padding_mask"] == 1, x["token_ids"],
                                         np.random.default_rng(9).integers(0, VOCABULARY, x["token_ids"].shape)))
    assert (garbage["token_ids"] != x["token_ids"]).any()
    clean = distiller.test_on_batch(x, y, weight, return_dict=True)
    noisy = distiller.test_on_batch(garbage, y, weight, return_dict=True)
    for name in ("logits_distillation", "feature_distillation", "teacher_agreement"):
        assert noisy[name] == pytest.approx(clean[name], rel=1e-6), name


def test_the_mask_falls_back_to_the_padding_mask_without_sample_weights():
    distiller = distiller_for()
    x, _, _ = token_batch([8, 4, 2, 6])
    value = distiller.test_on_batch(x, return_dict=True)["distillation_loss"]
    expected = numpy_kl(distiller.teacher(x), distiller.student(x), 2.0, mask=x["padding_mask"])
    # The KL of two close float32 distributions (~2e-3) carries ~1e-7 of
    # cancellation error: this CPU's oneDNN kernels (TF 2.21) land 7.7e-8 away,
    # TensorFlow 2.19's 3.5e-5 relative.
    assert value == pytest.approx(expected, rel=1e-5, abs=2e-7)


def numpy_generalized_jsd(t, s, beta, temperature=1.0, mask=None):
    log_p = numpy_log_softmax(np.asarray(t, np.float64) / temperature)
    log_q = numpy_log_softmax(np.asarray(s, np.float64) / temperature)
    p, q = np.exp(log_p), np.exp(log_q)
    m = beta * p + (1 - beta) * q
    value = beta * (p * (log_p - np.log(m))).sum(-1) + (1 - beta) * (q * (log_q - np.log(m))).sum(-1)
    value = value * temperature**2
    return float((value * mask).sum() / mask.sum())


@pytest.mark.parametrize("beta", [0.5, 0.2, 0.9])
def test_generalized_jsd_against_numpy_masked(beta):
    distiller = distiller_for(losses.GeneralizedJSD(beta=beta, temperature=2.0))
    x, y, weight = token_batch([8, 6, 3, 2])
    value = distiller.test_on_batch(x, y, weight, return_dict=True)["distillation_loss"]
    expected = numpy_generalized_jsd(distiller.teacher(x), distiller.student(x), beta, 2.0, weight)
    # float32 cancellation: the divergence of two close distributions is ~1e-4.
    assert value == pytest.approx(expected, rel=1e-3, abs=1e-7)


def test_generalized_jsd_ends_are_the_two_kls_and_the_default_is_jensen_shannon():
    rng = np.random.default_rng(0)
    t, s = rng.normal(size=(3, 5, 7)) * 2, rng.normal(size=(3, 5, 7)) * 2
    log_p, log_q = (logit_losses.log_softmax_at(keras.ops.array(v, "float32"), 1.0) for v in (t, s))
    np.testing.assert_allclose(logit_losses.generalized_jsd(log_p, log_q, 0.0),
                               logit_losses.kl_divergence(log_p, log_q), rtol=1e-6)
    np.testing.assert_allclose(logit_losses.generalized_jsd(log_p, log_q, 1.0),
                               logit_losses.kl_divergence(log_q, log_p), rtol=1e-6)
    ones = np.ones((3, 5))
    assert float(losses.GeneralizedJSD().compute_loss(keras.ops.array(t), keras.ops.array(s))) == (
        pytest.approx(numpy_generalized_jsd(t, s, 0.5, mask=ones), rel=1e-5))
    restored = round_trip(losses.GeneralizedJSD(beta=0.3, temperature=2.0))
    assert restored.beta == 0.3 and float(restored.temperature) == 2.0


def one_step(strategy, weights, batch):
    x, y, weight = batch
    with strategy.scope():
        teacher, student = causal_lm(32, 2, "teacher"), causal_lm(16, 1, "student")
        teacher.set_weights(weights[0])
        student.set_weights(weights[1])
        distiller = keras_kd.Distiller(teacher, student, [
            keras_kd.LogitsDistillation(2.0),
            keras_kd.FeatureDistillation(teacher_layer_name="teacher_backbone/transformer_layer_1",
                                         student_layer_name="student_backbone/transformer_layer_0",
                                         projection="auto")], student_loss_weight=0.3)
        distiller.compile(optimizer=keras.optimizers.SGD(0.5),
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        for connector, initial in zip(distiller.connectors.values(), weights[2]):
            connector.set_weights(initial)
    dataset = tf.data.Dataset.from_tensor_slices((x, y, weight)).batch(len(y))
    logs = distiller.fit(dataset, epochs=1, verbose=0).history
    return [w.numpy() for w in student.weights], {k: v[0] for k, v in logs.items()}


def test_two_replicas_with_uneven_padding_update_and_log_as_one_device(two_replicas):
    strategy = two_replicas
    reference = distiller_for([
        keras_kd.LogitsDistillation(2.0),
        keras_kd.FeatureDistillation(teacher_layer_name="teacher_backbone/transformer_layer_1",
                                     student_layer_name="student_backbone/transformer_layer_0",
                                     projection="auto")])
    weights = (reference.teacher.get_weights(), reference.student.get_weights(),
               [c.get_weights() for c in reference.connectors.values()])
    # Replica 1 gets the first half (mostly padding), replica 2 the second.
    batch = token_batch([2, 1, 8, 7])
    one_weights, one_logs = one_step(tf.distribute.get_strategy(), weights, batch)
    two_weights, two_logs = one_step(strategy, weights, batch)
    assert max(np.abs(a - b).max() for a, b in zip(one_weights, weights[1])) > 1e-3
    assert max(np.abs(a - b).max() for a, b in zip(one_weights, two_weights)) <= 1e-6
    for name in ("logits_distillation", "feature_distillation", "distillation_loss", "loss"):
        assert two_logs[name] == pytest.approx(one_logs[name], abs=1e-6), name


def byte_preprocessor(sequence_length=LENGTH):
    from keras_hub.src.tokenizers.byte_pair_tokenizer import bytes_to_unicode

    _, symbols = bytes_to_unicode()
    vocabulary = {symbol: i for i, symbol in enumerate(symbols)}
    vocabulary["Ġt"] = len(vocabulary)  # one merge: the tokenizer needs at least one
    vocabulary["<|endoftext|>"] = len(vocabulary)
    tokenizer = keras_hub.models.GPT2Tokenizer(vocabulary=vocabulary, merges=["Ġ t"])
    return keras_hub.models.GPT2CausalLMPreprocessor(tokenizer=tokenizer, sequence_length=sequence_length)


def test_raw_text_goes_through_the_students_preprocessor_once_per_batch():
    preprocessor = byte_preprocessor()
    teacher = causal_lm(32, 1, "teacher", vocabulary=258, seed=1)
    student = causal_lm(16, 1, "student", vocabulary=258, preprocessor=preprocessor, seed=2)
    distiller = keras_kd.Distiller(teacher, student, keras_kd.LogitsDistillation(1.0),
                                   student_loss_weight=0.5)
    distiller.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    texts = ["the cat", "a long sentence here", "hi", "ok then"]
    from_text = distiller.evaluate(texts, batch_size=4, verbose=0, return_dict=True)
    x, y, weight = preprocessor(tf.constant(texts))
    from_ids = distiller.test_on_batch(x, y, weight, return_dict=True)
    for name in ("distillation_loss", "student_loss", "teacher_agreement"):
        assert from_text[name] == pytest.approx(from_ids[name], rel=1e-6), name
    history = distiller.fit(texts, batch_size=2, epochs=1, verbose=0).history
    assert np.isfinite(history["loss"][0])
    without = keras_kd.Distiller(teacher, causal_lm(16, 1, "bare_student", vocabulary=258, seed=2),
                                 student_loss_weight=0.0)
    without.compile(optimizer="sgd")
    with pytest.raises(ValueError, match=r"The data holds strings, but the student 'bare_student' takes "
                                         r"\['int32', 'int32'\] inputs and has no KerasHub preprocessor"):
        without.fit(texts, batch_size=2, epochs=1, verbose=0)


def test_different_tokenizers_are_refused_and_padding_rows_need_truncate():
    other = byte_preprocessor()
    other.tokenizer = keras_hub.models.GPT2Tokenizer(
        vocabulary={"a": 0, "b": 1, "ab": 2, "<|endoftext|>": 3}, merges=["a b"])
    with pytest.raises(ValueError, match=r"tokenize differently: their vocabularies \(258 and 4 tokens\) "
                                         r"first differ at token id 0"):
        keras_kd.Distiller(causal_lm(16, 1, "teacher", vocabulary=258, preprocessor=byte_preprocessor()),
                           causal_lm(16, 1, "student", vocabulary=258, preprocessor=other))
    with pytest.raises(ValueError, match=r"teacher outputs 72 classes .* pass "
                                         r"vocabulary_alignment='truncate' to the Distiller"):
        keras_kd.Distiller(causal_lm(16, 1, "teacher", vocabulary=72), causal_lm(16, 1, "student"))
    with pytest.raises(ValueError, match=r"`vocabulary_alignment` must be None or 'truncate'"):
        keras_kd.Distiller(causal_lm(16, 1, "teacher"), causal_lm(16, 1, "student"),
                           vocabulary_alignment="pad")


def gpt2_vocabulary():
    """GPT-2's byte-level vocabulary, built in memory: its printable stand-in
    for each of the 256 bytes (as GPT-2's `bytes_to_unicode`), one merge
    ("Ġt") and the end token: 258 tokens."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
    others = [b for b in range(256) if b not in printable]
    symbols = [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]
    return {**{symbol: i for i, symbol in enumerate(symbols)}, "Ġt": 256, "<|endoftext|>": 257}


def lm_with_tokenizer(name, vocabulary):
    tokenizer = keras_hub.models.GPT2Tokenizer(vocabulary=vocabulary, merges=["Ġ t"])
    preprocessor = keras_hub.models.GPT2CausalLMPreprocessor(tokenizer=tokenizer, sequence_length=LENGTH)
    return causal_lm(16, 1, name, vocabulary=258, preprocessor=preprocessor)


def swapped(vocabulary):
    """'a' and 'b' trade ids; the dict keeps its key order, so `get_vocabulary()` is unchanged."""
    return {**vocabulary, "a": vocabulary["b"], "b": vocabulary["a"]}


def shifted(vocabulary):
    """Every id one higher, a new token at id 0 (added last: the keys keep their order)."""
    return {**{token: i + 1 for token, i in vocabulary.items()}, "<pad>": 0}


def missing(vocabulary):
    """No token has id 5 (the tokenizer's ids have a hole)."""
    return {token: i for token, i in vocabulary.items() if i != 5}


@pytest.mark.parametrize("student_vocabulary, message", [
    (swapped, r"their vocabularies \(258 and 258 tokens\) first differ at token id 64, which is 'a' to "
              r"the teacher's tokenizer and 'b' to the student's, so the same id would mean different "
              r"tokens to the two models .* Distil between models that share one tokenizer: the same "
              r"vocabulary, ids included, and the same merges."),
    (shifted, r"\(258 and 259 tokens\) first differ at token id 0, which is '!' to the teacher's tokenizer "
              r"and '<pad>' to the student's"),
    (missing, r"\(258 and 257 tokens\) first differ at token id 5, which is '&' to the teacher's tokenizer "
              r"and no token to the student's"),
])
def test_tokenizers_are_compared_id_by_id(student_vocabulary, message):
    vocabulary = gpt2_vocabulary()
    assert vocabulary["a"] == 64 and vocabulary["!"] == 0 and vocabulary["&"] == 5
    teacher = lm_with_tokenizer("teacher", vocabulary)
    keras_kd.Distiller(teacher, lm_with_tokenizer("student", dict(vocabulary)))  # the same ids: accepted
    student = lm_with_tokenizer("student", student_vocabulary(vocabulary))
    with pytest.raises(ValueError, match=r"The teacher 'teacher' and the student 'student' tokenize "
                                         r"differently: .*" + message):
        keras_kd.Distiller(teacher, student)


def test_truncate_compares_the_shared_rows_of_the_logits():
    teacher, student = causal_lm(32, 1, "teacher", vocabulary=72, seed=1), causal_lm(16, 1, "student")
    distiller = keras_kd.Distiller(teacher, student, keras_kd.LogitsDistillation(2.0),
                                   student_loss_weight=0.0, vocabulary_alignment="truncate")
    distiller.compile(optimizer="sgd")
    x, y, weight = token_batch([8, 4, 2, 5])
    value = distiller.test_on_batch(x, y, weight, return_dict=True)["distillation_loss"]
    expected = numpy_kl(np.asarray(teacher(x))[..., :VOCABULARY], student(x), 2.0, mask=weight)
    assert value == pytest.approx(expected, rel=1e-3)  # float32: KL of two close distributions
    assert abs(value - numpy_kl(np.asarray(teacher(x))[..., 1:VOCABULARY + 1], student(x), 2.0,
                                mask=weight)) > 1e-2 * value  # the first rows, not any rows
    restored = keras_kd.Distiller.from_config(distiller.get_config())
    assert restored.vocabulary_alignment == "truncate"


def count_ops(function, kind):
    graph = function.get_concrete_function().graph
    return sum(op.type == kind for op in graph.get_operations())


def test_the_hard_label_loss_is_left_out_at_weight_zero_and_follows_a_schedule():
    from keras_kd.callbacks import DistillationScheduler

    # Reverse KL: the hard-label loss is Keras's own op (the forward KL fuses it).
    distiller = distiller_for(losses.ReverseKL(2.0), student_loss_weight=0.0, fused_head=False)
    x, y, weight = token_batch([8, 6, 4, 2])
    assert distiller.train_on_batch(x, y, weight, return_dict=True)["student_loss"] == 0.0
    step = tf.function(lambda: distiller.train_step((x, y, weight)))
    without = count_ops(step, "SparseSoftmaxCrossEntropyWithLogits")
    distiller.student_loss_weight.assign(0.5)
    with pytest.raises(tf.errors.InvalidArgumentError, match="student_loss_weight left 0 after the "
                                                             "training step was traced"):
        distiller.train_function(iter([(x, y, weight)]))  # a stale step refuses
    assert distiller.train_on_batch(x, y, weight, return_dict=True)["student_loss"] > 1.0  # retraced
    with_labels = count_ops(tf.function(lambda: distiller.train_step((x, y, weight))),
                            "SparseSoftmaxCrossEntropyWithLogits")
    assert without == 0 and with_labels >= 1
    distiller.student_loss_weight.assign(0.0)
    schedule = DistillationScheduler({"student_loss_weight": lambda epoch: 0.0 if epoch == 0 else 0.5})
    dataset = tf.data.Dataset.from_tensor_slices((x, y, weight)).batch(4)
    history = distiller.fit(dataset, epochs=2, callbacks=[schedule], verbose=0).history
    assert history["student_loss"][0] == 0.0 and history["student_loss"][1] > 1.0


class TokenCrossEntropy(keras.losses.Loss):
    def call(self, y_true, y_pred):
        return keras.losses.sparse_categorical_crossentropy(y_true, y_pred, from_logits=True)


@pytest.mark.parametrize("reduction", ["sum_over_batch_size", "mean_with_sample_weight"])
def test_the_hard_labels_and_the_forward_kl_share_one_gradient_pass(reduction):
    x, y, weight = token_batch([8, 6, 3, 1])

    def one_step(loss):
        distiller = distiller_for(student_loss_weight=0.4, fused_head=False)  # the logits' own fusion
        distiller.compile(optimizer=keras.optimizers.SGD(0.5), loss=loss)
        logs = distiller.train_on_batch(x, y, weight, return_dict=True)
        step = tf.function(lambda: distiller.train_step((x, y, weight)))
        return distiller.student.get_weights(), logs, count_ops(step, "SparseSoftmaxCrossEntropyWithLogits")

    fused_weights, fused, fused_ops = one_step(
        keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=reduction))
    # The same loss in a class of its own is not fused: Keras's op computes it.
    apart_weights, apart, apart_ops = one_step(TokenCrossEntropy(reduction=reduction))
    assert fused_ops == 0 and apart_ops >= 1
    for name in ("student_loss", "distillation_loss", "loss"):
        assert fused[name] == pytest.approx(apart[name], rel=1e-5), name
    assert max(np.abs(a - b).max() for a, b in zip(fused_weights, apart_weights)) <= 1e-6
    assert max(np.abs(a - b).max() for a, b in zip(fused_weights, distiller_for().student.get_weights())) > 1e-3

    # The hard-label value against NumPy, at the weights before the step.
    logits = keras.ops.convert_to_numpy(distiller_for().student(x)).astype("float64")
    nll = -np.take_along_axis(numpy_log_softmax(logits), y[..., None], axis=-1)[..., 0]
    denominator = weight.sum() if reduction == "mean_with_sample_weight" else weight.size
    assert fused["student_loss"] == pytest.approx((nll * weight).sum() / denominator, rel=1e-5)


def plain_forward_kl_and_cross_entropy(teacher, student, temperature, labels):
    """Both terms by autodiff of the textbook formulas."""
    log_p, log_q = tf.nn.log_softmax(teacher / temperature), tf.nn.log_softmax(student / temperature)
    kl = tf.reduce_sum(tf.exp(log_p) * (log_p - log_q), -1) * temperature**2
    return kl, -tf.gather(tf.nn.log_softmax(student), labels, batch_dims=2)


def random_terms(seed, shape=(3, 5, 11)):
    rng = np.random.default_rng(seed)
    teacher = tf.constant(rng.normal(size=shape) * 2, "float32")
    student = tf.Variable(rng.normal(size=shape), dtype="float32")
    labels = tf.constant(rng.integers(0, shape[-1], shape[:2]), "int32")
    upstream = [tf.constant(rng.uniform(size=shape[:2]), "float32") for _ in range(2)]
    return teacher, student, labels, upstream


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("mode", ["eager", "graph, temperature a variable", "xla"])
def test_the_fused_gradient_equals_autodiff_of_both_terms(temperature, mode):
    # At T = 1 the backward pass takes its other form (the one-hot terms cancel).
    teacher, student, labels, (up_kl, up_ce) = random_terms(3)
    variable = tf.Variable(temperature)

    def both(function, temperature):
        with tf.GradientTape() as tape:
            kl, ce = function(teacher, student, temperature, labels)
            total = tf.reduce_sum(kl * up_kl) + tf.reduce_sum(ce * up_ce)
        return kl, ce, tape.gradient(total, student)

    fused = lambda: both(logit_losses.forward_kl_and_cross_entropy, variable if mode != "eager" else temperature)
    if mode != "eager":
        fused = tf.function(fused, jit_compile=mode == "xla")
    expected = both(plain_forward_kl_and_cross_entropy, temperature)
    for value, reference in zip(fused(), expected):
        np.testing.assert_allclose(value, reference, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("positions_per_chunk", [1, 4, 15, 40])
def test_values_are_computed_by_chunks_of_positions_that_may_overlap(monkeypatch, positions_per_chunk):
    # 15 positions: chunks of 4 start at 0, 4, 8 and 11 (the last one overlaps).
    teacher, student, labels, _ = random_terms(4)
    monkeypatch.setattr("keras_kd.losses._fused_kl._CHUNK_ELEMENTS", positions_per_chunk * 11)
    calls = []

    def values(t, s, y):
        calls.append(t.shape)
        return logit_losses._forward_kl_values(t, s, 2.0), tf.cast(y, "float32")

    for run in (lambda f: f(), tf.function(lambda f: f(), jit_compile=True)):
        kl, y = run(lambda: logit_losses._chunked_positions(values, (teacher, student, labels), outputs=2))
        np.testing.assert_allclose(kl, plain_forward_kl_and_cross_entropy(teacher, student, 2.0, labels)[0],
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(y, labels)
    assert calls[0][0] == min(positions_per_chunk, 15)


def peak_buffers(step, buffer_bytes):
    """The peak memory of `step`'s second run above what was held before it,
    in `(batch, sequence, vocabulary)` float32 buffers."""
    step()
    tf.config.experimental.reset_memory_stats("CPU:0")
    resting = tf.config.experimental.get_memory_info("CPU:0")["current"]
    step()
    return (tf.config.experimental.get_memory_info("CPU:0")["peak"] - resting) / buffer_bytes


@pytest.mark.parametrize("temperature, labelled, buffers", [
    (1.0, True, 2), (2.0, True, 3), (2.0, False, 2)])
def test_the_backward_pass_reuses_the_logits_buffers(temperature, labelled, buffers):
    """The step's (batch, sequence, vocabulary) buffers: the two models'
    logits, whose buffers the gradient reuses; one more for the hard labels
    at T != 1 (softmax(s/T) and softmax(s) both need the student's logits).
    With the earlier per-sample map_fn the same step took 4."""
    batch, sequence, vocabulary, hidden = 4, 128, 32_000, 64
    rng = np.random.default_rng(0)
    weights = [tf.constant(rng.normal(size=(hidden, vocabulary)), "float32") for _ in range(2)]
    student_weights = tf.Variable(weights[1])
    inputs = tf.constant(rng.normal(size=(batch * sequence, hidden)), "float32")
    labels = tf.constant(rng.integers(0, vocabulary, (batch, sequence)), "int32")
    temperature = tf.Variable(temperature)

    @tf.function
    def step():
        teacher = tf.reshape(inputs @ weights[0], (batch, sequence, vocabulary))
        with tf.GradientTape() as tape:
            student = tf.reshape(inputs @ student_weights, (batch, sequence, vocabulary))
            if labelled:
                kl, ce = logit_losses.forward_kl_and_cross_entropy(teacher, student, temperature, labels)
                loss = tf.reduce_mean(kl) + tf.reduce_mean(ce)
            else:
                loss = tf.reduce_mean(logit_losses._forward_kl_fused(teacher, student, temperature))
        return tf.reduce_sum(tape.gradient(loss, student_weights))

    peak = peak_buffers(step, 4 * batch * sequence * vocabulary)
    assert buffers <= peak <= buffers + 0.2, peak


def test_a_loss_without_a_mask_argument_is_refused_on_token_batches():
    class NoMask(keras_kd.DistillationLoss):
        expects_logits = True

        def compute_loss(self, teacher_outputs, student_outputs):
            return keras.ops.mean(keras.ops.square(teacher_outputs - student_outputs))

    distiller = distiller_for(NoMask())
    x, y, weight = token_batch([8, 6, 4, 2])
    with pytest.raises(ValueError, match=r"has no `mask` or `\*\*kwargs` argument in compute_loss\(\), "
                                         r"so padding would be averaged in"):
        distiller.test_on_batch(x, y, weight)


# ------------------------------------------------------ top-K teacher cache

from keras_kd import lm  # noqa: E402


def test_top_k_kl_at_k_equal_to_the_vocabulary_is_the_full_kl():
    rng = np.random.default_rng(3)
    t, s = rng.normal(size=(2, 5, 40)) * 3, rng.normal(size=(2, 5, 40)) * 3
    top = lm.top_k_targets(keras.ops.array(t, "float32"), 40, dtype="float32")
    got = np.asarray(lm.top_k_kl(top, keras.ops.array(s, "float32")))
    log_p, log_q = numpy_log_softmax(t), numpy_log_softmax(s)
    np.testing.assert_allclose(got, (np.exp(log_p) * (log_p - log_q)).sum(-1), rtol=1e-5, atol=1e-7)


def numpy_top_k_gap(t, s, k):
    """Full KL minus the K-plus-tail-bucket KL, per position, and the identity
    that documents it: p_tail * KL(p( . | tail) || q( . | tail))."""
    log_p, log_q = numpy_log_softmax(t), numpy_log_softmax(s)
    p, q = np.exp(log_p), np.exp(log_q)
    top = np.argsort(-p, axis=-1)[..., :k]
    in_top = np.zeros_like(p, bool)
    np.put_along_axis(in_top, top, True, axis=-1)
    p_tail, q_tail = (p * ~in_top).sum(-1), (q * ~in_top).sum(-1)
    full = (p * (log_p - log_q)).sum(-1)
    bucketed = (p * in_top * (log_p - log_q)).sum(-1) + p_tail * (np.log(p_tail) - np.log(q_tail))
    conditional = (p * ~in_top / p_tail[..., None]
                   * (log_p - np.log(p_tail[..., None]) - log_q + np.log(q_tail[..., None]))).sum(-1)
    return full, bucketed, p_tail * conditional


def test_top_64_of_a_32k_vocabulary_is_within_the_documented_bound():
    vocabulary = 32_000
    teacher = causal_lm(16, 1, "teacher", vocabulary=vocabulary, seed=1)
    student = causal_lm(16, 1, "student", vocabulary=vocabulary, seed=2)
    x, _, weight = token_batch([8, 5])
    t, s = np.asarray(teacher(x), np.float64), np.asarray(student(x), np.float64)
    full, bucketed, gap = numpy_top_k_gap(t, s, 64)
    exact = lm.top_k_targets(keras.ops.array(t, "float32"), 64, dtype="float32")
    # float32 log-softmax over 32k classes: absolute error ~5e-8 on values ~2e-5.
    np.testing.assert_allclose(lm.top_k_kl(exact, keras.ops.array(s, "float32")), bucketed, rtol=1e-3, atol=1e-7)
    assert np.all(full - bucketed >= -1e-9)  # a lower bound of the full KL
    np.testing.assert_allclose(full - bucketed, gap, rtol=1e-6, atol=1e-12)  # the gap, exactly
    # float16 storage, as cached by default: within its documented rounding bound.
    half = np.asarray(lm.top_k_kl(lm.top_k_targets(keras.ops.array(t, "float32"), 64),
                                  keras.ops.array(s, "float32")))
    log_p = numpy_log_softmax(t)
    top_entropy = np.sort(-np.exp(log_p) * log_p, axis=-1)[..., -64:].sum(-1)
    assert np.all(np.abs(half - bucketed) <= 2.0**-11 * top_entropy * 2)


def test_distilling_from_a_top_k_cache_equals_full_kd_at_k_equal_to_the_vocabulary():
    distiller = distiller_for(keras_kd.LogitsDistillation(1.0))
    x, y, weight = token_batch([8, 6, 3, 2, 7, 5, 4, 1])
    dataset = tf.data.Dataset.from_tensor_slices((x, y, weight)).batch(4)
    full = distiller.evaluate(dataset, verbose=0, return_dict=True)
    cached = keras_kd.cache_teacher_outputs(distiller, dataset, top_k=VOCABULARY,
                                            top_k_dtype="float32", shuffle=False)
    from_cache = distiller.evaluate(cached, verbose=0, return_dict=True)
    for name in ("distillation_loss", "teacher_agreement"):
        assert from_cache[name] == pytest.approx(full[name], rel=1e-5), name
    small = keras_kd.cache_teacher_outputs(distiller, dataset, top_k=16, shuffle=False)
    stored = cache.split(next(iter(small))[0])[1].logits
    per_token = sum(np.dtype(v.dtype.as_numpy_dtype).itemsize * (v.shape[-1] if v.shape.rank == 3 else 1)
                    for v in stored)
    assert per_token == 6 * 16 + 2  # <= 6K + 8 bytes per token, against 4 V for float32 logits
    assert np.isfinite(distiller.fit(small, epochs=1, verbose=0).history["loss"][0])


def test_a_top_k_cache_refuses_other_losses_and_temperatures():
    x, y, weight = token_batch([8, 6, 3, 2])
    dataset = tf.data.Dataset.from_tensor_slices((x, y, weight)).batch(4)
    for loss, error, message in (
            (losses.ReverseKL(), ValueError, r"supports the forward KL .* only, but this loss is ReverseKL\(loss='reverse_kl'\)\. "),
            (losses.GeneralizedJSD(0.5), ValueError, r"but this loss is GeneralizedJSD\. Cache full logits"),
            (keras_kd.LogitsDistillation(2.0), ValueError,
             r"The data is a top-K teacher cache, which holds log-probabilities at temperature 1, but the term "
             r"'logits_distillation' has temperature 2.0. Set the LogitsDistillation temperature to 1.0")):
        distiller = distiller_for(loss)
        cached = keras_kd.cache_teacher_outputs(distiller, dataset, top_k=8)
        with pytest.raises(error, match=message):
            distiller.evaluate(cached, verbose=0)
    with pytest.raises(tf.errors.InvalidArgumentError,  # a batch given directly: checked as the step runs
                       match=r"A top-K teacher cache holds log-probabilities at temperature 1; set the "
                             r"LogitsDistillation temperature to 1.0"):
        distiller.test_on_batch(*next(iter(cached)))
    distiller = distiller_for(keras_kd.LogitsDistillation(1.0))
    scheduler = keras_kd.callbacks.DistillationScheduler({"temperature": lambda epoch: 1.0 + epoch})
    with pytest.raises(ValueError, match=r"^The data is a top-K teacher cache, which holds log-probabilities at "
                                         r"temperature 1, but DistillationScheduler schedules 'temperature'\. Remove "
                                         r"that schedule \(keep the temperature at 1\.0\), or cache full logits"):
        distiller.fit(cached, epochs=2, verbose=0, callbacks=[scheduler])
    small = keras_kd.Distiller(causal_lm(32, 1, "small_teacher", vocabulary=40),
                               causal_lm(16, 1, "small_student", vocabulary=40), keras_kd.LogitsDistillation(1.0),
                               student_loss_weight=0.0)
    small.compile(optimizer="sgd")
    wide = keras_kd.cache_teacher_outputs(distiller_for(keras_kd.LogitsDistillation(1.0)),
                                          dataset.map(lambda x, y, w: ({**x, "token_ids": x["token_ids"] % 40}, y % 40, w)),
                                          top_k=VOCABULARY, shuffle=False)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"The top-K teacher cache holds token ids beyond the "
                                                              r"student vocabulary of 40 tokens: it was built with"):
        small.evaluate(wide, verbose=0)
    full = keras_kd.cache_teacher_outputs(distiller_for(keras_kd.LogitsDistillation(1.0)), dataset, shuffle=False)
    with pytest.raises(ValueError, match=rf"The cached teacher output has {VOCABULARY} values on its last axis "
                                         r"\(shape \(None, 8, 64\)\), but this Distiller's teacher gives 40 "):
        small.evaluate(full, verbose=0)


def numpy_sampled_kl(top, s):
    """KL from the drawn tokens' empirical distribution to the student (NumPy)."""
    log_p, ids = np.asarray(top.log_probs, np.float64), np.asarray(top.ids)
    log_q = np.take_along_axis(numpy_log_softmax(s), ids, axis=-1)
    p = np.exp(log_p)
    return (p * (np.where(p > 0, log_p, 0.0) - log_q)).sum(-1)


def test_sampled_targets_are_the_fractions_of_k_draws_and_their_mean_is_the_teacher():
    rng = np.random.default_rng(5)
    t, s = rng.normal(size=(2, 3, 11)) * 2, rng.normal(size=(2, 3, 11))
    tf.random.set_seed(0)
    top = lm.sampled_targets(tf.constant(t, "float32"), 16, dtype="float32")
    log_p, ids = np.asarray(top.log_probs), np.asarray(top.ids)
    assert log_p.shape == ids.shape == (2, 3, 16) and np.all(np.isneginf(np.asarray(top.tail_log_mass)))
    drawn = np.exp(log_p)
    np.testing.assert_allclose(drawn.sum(-1), 1.0, rtol=1e-6)  # every draw counted once
    assert np.all(np.round(drawn * 16, 4) == np.round(drawn * 16))  # multiples of 1/16
    assert np.all(np.diff(drawn, axis=-1) <= 0)  # the most drawn first
    for row_ids, row_p in zip(ids.reshape(-1, 16), drawn.reshape(-1, 16)):  # distinct tokens weigh
        assert len(set(row_ids[row_p > 0])) == (row_p > 0).sum()
    np.testing.assert_allclose(lm.top_k_kl(top, tf.constant(s, "float32")), numpy_sampled_kl(top, s),
                               rtol=1e-5, atol=1e-6)
    # Unbiased: over many draws, the fractions average to the teacher's probabilities.
    many = lm.sampled_targets(tf.constant(np.repeat(t[:1, :1], 2000, axis=0), "float32"), 16,
                              dtype="float32")
    estimate = np.zeros(11)
    np.add.at(estimate, np.asarray(many.ids).ravel(), np.exp(np.asarray(many.log_probs)).ravel() / 2000)
    p = np.exp(numpy_log_softmax(t[0, 0]))
    assert np.all(np.abs(estimate - p) <= 4 * np.sqrt(p * (1 - p) / (2000 * 16)) + 1e-6)


def test_targets_stored_in_float16_are_renormalized_to_a_distribution():
    rng = np.random.default_rng(6)
    s = rng.normal(size=(2, 11))
    with np.errstate(divide="ignore"):  # log 0 = -inf: slots of repeated draws
        exact = np.log(np.array([[7, 5, 3, 1, 0, 0, 0, 0], [4, 4, 2, 2, 2, 2, 0, 0]]) / 16.0)
    ids = np.array([[3, 0, 9, 4, 1, 2, 5, 6], [1, 2, 3, 4, 5, 6, 7, 8]], "int32")
    stored = lm.TopK(tf.constant(exact, "float16"), tf.constant(ids), tf.constant([-np.inf, -np.inf], "float16"))
    assert np.abs(np.exp(np.asarray(stored.log_probs, np.float64)).sum(-1) - 1.0).max() > 3e-4  # rounded
    probabilities = np.exp(np.asarray(stored.log_probs, np.float64))
    renormalized = np.log(probabilities / probabilities.sum(-1, keepdims=True))
    expected = numpy_sampled_kl(lm.TopK(renormalized, ids, None), s)
    np.testing.assert_allclose(lm.top_k_kl(stored, tf.constant(s, "float32")), expected, rtol=1e-5)


def test_a_sampled_cache_trains_and_refuses_bad_methods():
    distiller = distiller_for(keras_kd.LogitsDistillation(1.0))
    x, y, weight = token_batch([8, 6, 3, 2])
    dataset = tf.data.Dataset.from_tensor_slices((x, y, weight)).batch(4)
    cached = keras_kd.cache_teacher_outputs(distiller, dataset, top_k=8, top_k_method="sampled",
                                            shuffle=False)
    stored = cache.split(next(iter(cached))[0])[1].logits
    assert stored.log_probs.shape[-1] == 8 and np.all(np.isneginf(stored.tail_log_mass.numpy()))
    assert np.isfinite(distiller.fit(cached, epochs=1, verbose=0).history["loss"][0])
    with pytest.raises(ValueError, match=r"`top_k_method` must be 'top' or 'sampled', but received 'best'"):
        keras_kd.cache_teacher_outputs(distiller, dataset, top_k=8, top_k_method="best")
    with pytest.raises(ValueError, match=r"top_k_method='sampled' needs top_k .* Pass e.g. top_k=16"):
        keras_kd.cache_teacher_outputs(distiller, dataset, top_k_method="sampled")
    with pytest.raises(ValueError, match=r"`top_k` must be a whole number, but received 2.5 .* Pass an integer"):
        keras_kd.cache_teacher_outputs(distiller, dataset, top_k=2.5)
    with pytest.raises(ValueError, match=r"top_k_dtype='bfloat16' sets how a top-K cache .* but top_k is None"):
        keras_kd.cache_teacher_outputs(distiller, dataset, top_k_dtype="bfloat16")
    with pytest.raises(ValueError, match=rf"top_k=100 is more than the teacher's vocabulary of {VOCABULARY} "
                                         rf"tokens. Pass top_k <= {VOCABULARY}"):
        keras_kd.cache_teacher_outputs(distiller, dataset, top_k=100)


# ----------------------------------------- sequence-level and on-policy (GKD)


class GenerateCounter:
    """Counts calls of a model's generate function."""

    def __init__(self, model):
        self.calls, function = 0, model.make_generate_function()

        def counted(*args, **kwargs):
            self.calls += 1
            return function(*args, **kwargs)

        model.generate_function = counted


def generating_pair():
    preprocessor = byte_preprocessor(sequence_length=16)
    teacher = causal_lm(32, 1, "teacher", vocabulary=258, seed=1)
    student = causal_lm(16, 1, "student", vocabulary=258, preprocessor=preprocessor, seed=2)
    for model in (teacher, student):
        model.compile(sampler="greedy")
    return teacher, student, preprocessor


def test_sequence_level_kd_trains_on_the_teachers_greedy_continuations():
    teacher, student, preprocessor = generating_pair()
    prompts = ["def f", "class A", "x = 1"]
    batches = lm.sequence_level_batches(teacher, prompts, preprocessor, batch_size=2, stop_token_ids=None)
    x, y, weight = next(iter(batches.unbatch().batch(3)))
    inputs = preprocessor.generate_preprocess(prompts, sequence_length=16)
    expected = np.asarray(teacher.make_generate_function()(inputs, stop_token_ids=None)["token_ids"])
    np.testing.assert_array_equal(x["token_ids"], expected[:, :-1])  # the teacher's own tokens
    np.testing.assert_array_equal(y, expected[:, 1:])
    prompt_lengths = np.asarray(inputs["padding_mask"]).sum(-1)
    np.testing.assert_array_equal(weight.numpy().sum(-1), 16 - prompt_lengths)  # continuation only
    distiller = keras_kd.Distiller(teacher, student, student_loss_weight=1.0)
    distiller.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    assert distiller.fit(batches, epochs=1, verbose=0).history["student_loss"][0] > 0


def test_on_policy_fraction_zero_is_token_level_kd_on_the_given_continuations():
    teacher, student, preprocessor = generating_pair()
    prompts, answers = ["def f", "class A", "x = 1", "if a"], [" return 1", ": pass", "0", " is b"]
    batches = lm.OnPolicyBatches(student, prompts, answers, preprocessor, fraction=0.0, batch_size=4)
    counter = GenerateCounter(student)
    x, y, weight = batches[0]
    assert counter.calls == 0
    full = preprocessor.generate_preprocess([p + a for p, a in zip(prompts, answers)], sequence_length=16)
    np.testing.assert_array_equal(x["token_ids"], np.asarray(full["token_ids"])[:, :-1])
    np.testing.assert_array_equal(y, np.asarray(full["token_ids"])[:, 1:])
    prompt_lengths = np.asarray(preprocessor.generate_preprocess(prompts, sequence_length=16)["padding_mask"]).sum(-1)
    answer_lengths = np.asarray(full["padding_mask"]).sum(-1) - prompt_lengths
    np.testing.assert_array_equal(weight.sum(-1), answer_lengths)  # continuation tokens only
    distiller = keras_kd.Distiller(teacher, student, keras_kd.LogitsDistillation(1.0), student_loss_weight=0.0)
    distiller.compile(optimizer="sgd")
    assert distiller.test_on_batch(x, y, weight, return_dict=True)["distillation_loss"] == pytest.approx(
        numpy_kl(teacher(x), student(x), 1.0, mask=weight), rel=1e-4)


def test_on_policy_rows_hold_the_students_own_greedy_continuations():
    teacher, student, preprocessor = generating_pair()
    prompts, answers = ["def f", "class A", "x = 1", "if a"], [" return 1", ": pass", "0", " is b"]
    batches = lm.OnPolicyBatches(student, prompts, answers, preprocessor, fraction=0.5, batch_size=4,
                                 stop_token_ids=None)
    rows = batches.on_policy_rows(0, 4)
    assert len(rows) == 2
    counter = GenerateCounter(student)
    x, y, weight = batches[0]
    assert counter.calls == 1
    mine = student.make_generate_function()(
        preprocessor.generate_preprocess([prompts[i] for i in rows], sequence_length=16),
        stop_token_ids=None)["token_ids"]
    np.testing.assert_array_equal(x["token_ids"][rows], np.asarray(mine)[:, :-1])
    others = [i for i in range(4) if i not in rows]
    given = preprocessor.generate_preprocess([prompts[i] + answers[i] for i in others], sequence_length=16)["token_ids"]
    np.testing.assert_array_equal(x["token_ids"][others], np.asarray(given)[:, :-1])
    distiller = keras_kd.Distiller(teacher, student, keras_kd.losses.GeneralizedJSD(0.5), student_loss_weight=0.0)
    distiller.compile(optimizer="sgd")
    assert np.isfinite(distiller.fit(batches, epochs=1, verbose=0).history["loss"][0])


@pytest.mark.slow
def test_a_cache_build_streams_its_peak_memory_does_not_grow_with_the_data(tmp_path):
    import json
    import pathlib
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parent.parent

    def build(count):
        folder = tmp_path / str(count)
        folder.mkdir()
        result = subprocess.run([sys.executable, "-m", "tests.cache_memory_job", str(count), str(folder)],
                                cwd=root, capture_output=True, text=True, timeout=600,
                                env={**__import__("os").environ, "PYTHONPATH": str(root)})
        assert result.returncode == 0, result.stderr[-2000:]
        return json.loads(result.stdout.strip().splitlines()[-1])

    small, large = build(1000), build(4000)
    assert large["cache_bytes"] > 3.5 * small["cache_bytes"] > 3.5 * 16e6  # 16 MB vs 64 MB of logits
    # Built in memory, the larger cache would add about 48 MB of peak RSS over the smaller one.
    assert large["growth"] - small["growth"] < 0.25 * (large["cache_bytes"] - small["cache_bytes"])


@pytest.mark.parametrize("arguments, message", [
    (dict(prompts="def f"), r"`prompts` must be a list of strings, but received one string \('def f'\)"),
    (dict(prompts=[], continuations=[]), r"`prompts` must be a non-empty list of strings, but received an empty list"),
    (dict(continuations=[" x", 3]), r"`continuations` must be a non-empty list of strings, but received a list holding int"),
    (dict(continuations=[" x"]), r"one continuation per prompt, but received 2 prompts and 1 continuations"),
    (dict(fraction=1.5), r"`fraction` must be in \[0.0, 1.0\], but received 1.5"),
    (dict(batch_size=2.5), r"`batch_size` must be a whole number, but received 2.5"),
    (dict(fraction=0.5, batch_size=1), r"fraction=0.5 of batch_size=1 rounds to 0 on-policy rows per batch: the "
                                       r"student would generate nothing. Pass batch_size >= 2"),
    (dict(fraction=0.1, batch_size=4), r"Pass batch_size >= 6"),
])
def test_on_policy_batches_refuse_what_would_silently_change_the_data(arguments, message):
    student, preprocessor = causal_lm(16, 1, "student", vocabulary=258), byte_preprocessor(sequence_length=16)
    given = dict(prompts=["def f", "class A"], continuations=[" return 1", ": pass"], fraction=0.5, batch_size=2)
    given.update(arguments)
    with pytest.raises(ValueError, match=message):
        lm.OnPolicyBatches(student, given.pop("prompts"), given.pop("continuations"), preprocessor, **given)
    with pytest.raises(ValueError, match=r"`prompts` must be a list of strings, but received one string"):
        lm.sequence_level_batches(student, "def f", preprocessor)
    assert len(lm.OnPolicyBatches(student, ["a", "b", "c"], ["1", "2", "3"], preprocessor, 0.5, batch_size=2.0)) == 2


def test_prompts_that_fill_the_sequence_are_refused_with_the_first_index():
    teacher, student, preprocessor = generating_pair()  # sequence_length 16
    prompts, answers = ["def f", "x" * 15, "y" * 40], [" return 1", "0", "1"]
    message = (r"prompts\[1\] \('xxxxxxxxxxxxxxx'...\) fills all 16 tokens of a sequence \(start token included\), "
               r"leaving no continuation to learn from: every token weight of its row would be 0 \(2 of 3 prompts "
               r"do\). Shorten those prompts or pass a larger sequence_length.")
    with pytest.raises(ValueError, match=message):
        lm.OnPolicyBatches(student, prompts, answers, preprocessor, fraction=0.5, batch_size=2)
    with pytest.raises(ValueError, match=message):
        lm.sequence_level_batches(teacher, prompts, preprocessor)
    lm.OnPolicyBatches(student, ["x" * 14], ["0"], preprocessor, fraction=0.0)  # one token left: accepted


def test_sequence_lengths_are_checked_against_both_models_before_the_first_step():
    teacher, student, preprocessor = generating_pair()  # both accept 16 positions
    with pytest.raises(ValueError, match=r"^OnPolicyBatches has sequences of 24 tokens, but the student 'student' "
                                         r"accepts at most 16 \(its max_sequence_length\)"):
        lm.OnPolicyBatches(student, ["def f"], [" x"], preprocessor, fraction=0.0, sequence_length=24)
    with pytest.raises(ValueError, match=r"^sequence_level_batches has sequences of 24 tokens, but the teacher"):
        lm.sequence_level_batches(teacher, ["def f"], preprocessor, sequence_length=24)
    keras.utils.set_random_seed(1)
    short = keras_hub.models.GPT2CausalLM(backbone=keras_hub.models.GPT2Backbone(
        vocabulary_size=258, num_layers=1, num_heads=2, hidden_dim=16, intermediate_dim=32, max_sequence_length=8,
        name="short_backbone"), preprocessor=None, name="short")
    distiller = keras_kd.Distiller(short, student, student_loss_weight=0.0)
    distiller.compile(optimizer="sgd")
    batches = lm.OnPolicyBatches(student, ["def f", "class A"], [" return 1", ": pass"], preprocessor, fraction=0.0)
    message = (r"^The data has sequences of 15 tokens, but the teacher 'short' accepts at most 8 \(its "
               r"max_sequence_length\). Pass sequences of at most 8 tokens")
    for data in (batches, tf.data.Dataset.from_tensor_slices(batches[0]).batch(2), batches[0][0]):
        with pytest.raises(ValueError, match=message):
            distiller.fit(data, epochs=1, verbose=0)
    with pytest.raises(ValueError, match=message.replace("15", "16")):  # text, through the student's preprocessor
        distiller.fit(["def f(x): return x"], epochs=1, verbose=0)


def test_batches_whose_token_weights_are_all_zero_are_warned_about_once():
    distiller = distiller_for()
    x, y, weight = token_batch([5, 6, 7, 8])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        distiller.fit(x, y, sample_weight=np.zeros_like(weight), batch_size=2, epochs=2, verbose=0)
    messages = [str(w.message) for w in caught if "token weight 0" in str(w.message)]
    assert messages == ["2 of 2 training batches of epoch 1 had every token weight 0 (sample_weight or "
                        "padding_mask): they trained nothing, and count as a loss of 0 in the logged mean. Check "
                        "the data: prompts that fill the sequence, continuations that end at once, rows of padding "
                        "only. (Warned once per fit.)"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        distiller.fit(x, y, sample_weight=weight, batch_size=2, epochs=1, verbose=0)
    assert not [w for w in caught if "token weight 0" in str(w.message)]
