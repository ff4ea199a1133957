"""The fused output head: a Distiller step of KerasHub causal LMs from the
final hidden states, a chunk of tokens at a time, equals the unfused step."""

import pathlib

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf

import keras_kd
from keras_kd import _keras_compat, hard_label
from keras_kd import metrics as fidelity
from keras_kd.losses import _fused_head
from tests.test_lm import peak_buffers
from tests.test_lm import token_batch as lm_token_batch

VOCABULARY = 97
RATE = 1e4


def fused_plan_for(distiller, batch):
    """The fused head's plan the Distiller's training step would take for `batch`, or None."""
    has_metrics = (_keras_compat.has_compiled_metrics(distiller)
                   or not fidelity.measurable_by_chunks(distiller.fidelity_metrics, batch))
    return hard_label.fused_head_for(
        distiller._fused_head_plan, distiller._augment, batch, distiller.loss,
        distiller._hard_label_loss_weights, hard_label.traced_value(distiller.student_loss_weight),
        has_metrics)


def gpt2(hidden, seed, name):
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=VOCABULARY, num_layers=1, num_heads=2, hidden_dim=hidden,
        intermediate_dim=2 * hidden, max_sequence_length=16, dropout=0.0, name=f"{name}_backbone")
    return keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None, name=name)


def gemma(hidden, seed, name):
    """Gemma 2 style: a soft-capped, tied output matrix."""
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.GemmaBackbone(
        vocabulary_size=VOCABULARY, num_layers=1, num_query_heads=2, num_key_value_heads=1,
        hidden_dim=hidden, intermediate_dim=2 * hidden, head_dim=hidden // 2,
        final_logit_soft_cap=5.0, name=f"{name}_backbone")
    return keras_hub.models.GemmaCausalLM(backbone=backbone, preprocessor=None, name=name)


def llama(hidden, seed, name):
    """An untied output matrix (`reverse_embeddings`)."""
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.LlamaBackbone(
        vocabulary_size=VOCABULARY, num_layers=1, num_query_heads=2, num_key_value_heads=1,
        hidden_dim=hidden, intermediate_dim=2 * hidden, tie_word_embeddings=False,
        name=f"{name}_backbone")
    return keras_hub.models.LlamaCausalLM(backbone=backbone, preprocessor=None, name=name)


def dense_lm(hidden, seed, name, activation=None):
    """A Functional token model ending in a Dense."""
    keras.utils.set_random_seed(seed)
    ids = keras.Input((None,), dtype="int32", name="token_ids")
    x = keras.layers.Embedding(VOCABULARY, hidden)(ids)
    x = keras.layers.Dense(hidden, activation="tanh")(x)
    logits = keras.layers.Dense(VOCABULARY, activation=activation,
                                kernel_initializer=keras.initializers.RandomNormal(stddev=0.5))
    return keras.Model(ids, logits(x), name=name)


def softmax_lm(hidden, seed, name):
    return dense_lm(hidden, seed, name, activation="softmax")


FAMILIES = {"gpt2": gpt2, "gemma": gemma, "llama": llama}


def token_batch(lengths, seed=0):
    """`tests.test_lm.token_batch` at this module's vocabulary."""
    return lm_token_batch(lengths, seed, VOCABULARY)


def sharpened(model, factor=8.0):
    """Scales the output matrix, so the two models' distributions differ
    clearly (random initial logits are near 0: a KL of ~1e-3, where float32
    rounding of the logits alone moves it by 1e-5 relative)."""
    head, _ = _fused_head.head_of(model)
    for weight in head.weights()[:1]:
        weight.assign(weight * factor)
    return model


def one_step(family, fused_head, loss=None, student_loss_weight=0.4, jit_compile=False,
             batch=None, strategy=None, metrics=None):
    """Logs and the gradients of one step: the student's weight change under
    SGD at rate 1e4 (so that the change dwarfs the weights, whose float32
    rounding would otherwise blur it), over -1e4."""
    # The longest sequence last: the last chunk overlaps real tokens.
    x, y, weight = batch or token_batch([1, 3, 6, 8])
    with strategy.scope() if strategy else _no_scope():
        make = FAMILIES[family] if isinstance(family, str) else family
        teacher, student = sharpened(make(16, 1, "teacher")), sharpened(make(8, 2, "student"), 4.0)
        distiller = keras_kd.Distiller(
            teacher, student, loss or keras_kd.LogitsDistillation(temperature=2.0),
            student_loss_weight=student_loss_weight, fused_head=fused_head)
        distiller.compile(optimizer=keras.optimizers.SGD(RATE), jit_compile=jit_compile, metrics=metrics,
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    assert (fused_plan_for(distiller, (x, y, weight)) is not None) == fused_head
    before = [v.numpy().copy() for v in student.trainable_variables]
    logs = distiller.train_on_batch(x, y, weight, return_dict=True)
    return logs, [(b - v.numpy()) / RATE for v, b in zip(student.trainable_variables, before)]


class _no_scope:
    def __enter__(self):
        return self

    def __exit__(self, *args):
        return False


def assert_same_step(fused, unfused, rtol=1e-5):
    (fused_logs, fused_deltas), (logs, deltas) = fused, unfused
    assert set(fused_logs) == set(logs)
    for name, value in logs.items():
        assert fused_logs[name] == pytest.approx(value, rel=rtol, abs=1e-7), name
    # Every gradient, to rtol of the gradients' scale (a gradient that is 0
    # in exact arithmetic, e.g. an attention key bias, is rounding noise).
    scale = max(np.abs(d).max() for d in deltas)
    assert scale > 1e-4
    for a, b in zip(fused_deltas, deltas):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * scale)


@pytest.fixture(params=[None, 5])
def chunked(request, monkeypatch):
    """The default chunk (all 32 positions in one) or chunks of 5 positions
    (the last one overlapping the one before)."""
    if request.param:
        monkeypatch.setattr(_fused_head, "CHUNK_ELEMENTS", request.param * VOCABULARY)
    return request.param


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_fused_step_equals_the_unfused_step_for_each_family(family, chunked):
    assert_same_step(one_step(family, True), one_step(family, False))


@pytest.mark.slow
@pytest.mark.parametrize("loss", [
    keras_kd.losses.ReverseKL(temperature=2.0),
    keras_kd.losses.GeneralizedJSD(beta=0.3, temperature=1.5),
    keras_kd.LogitsDistillation(temperature=1.0),
], ids=["reverse_kl", "generalized_jsd", "forward_kl_t1"])
def test_other_divergences_and_temperatures_and_no_hard_labels(loss, chunked):
    for weight in (0.4, 0.0):
        assert_same_step(one_step("gemma", True, loss, weight), one_step("gemma", False, loss, weight))


@pytest.mark.slow
def test_a_final_dense_uses_the_fused_head_with_a_softmax_for_the_teacher_alone(monkeypatch):
    monkeypatch.setattr(_fused_head, "CHUNK_ELEMENTS", 3 * VOCABULARY)
    x, y, weight = token_batch([1, 3, 6, 8])
    batch = (x["token_ids"], y, weight)
    assert_same_step(one_step(dense_lm, True, batch=batch), one_step(dense_lm, False, batch=batch))
    # A softmax: the distillation reads its input, the hard-label loss its
    # output (probabilities), which the fused head does not compute.
    assert_same_step(one_step(softmax_lm, True, batch=batch, student_loss_weight=0.0),
                     one_step(softmax_lm, False, batch=batch, student_loss_weight=0.0))
    distiller = keras_kd.Distiller(softmax_lm(16, 1, "teacher"), softmax_lm(8, 2, "student"))
    distiller.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy())
    assert distiller._fused_head_plan is not None
    assert fused_plan_for(distiller, batch) is None


FIDELITY = ["teacher_kl", "student_ece", "teacher_ece"]


@pytest.mark.parametrize("family", ["gemma", "gpt2"])
def test_fidelity_metrics_are_computed_per_chunk_and_equal_the_unfused_values(family, monkeypatch):
    monkeypatch.setattr(_fused_head, "CHUNK_ELEMENTS", 5 * VOCABULARY)
    for weight in (0.4, 0.0):  # the calibration metrics read the labels at weight 0 too
        fused = one_step(family, True, student_loss_weight=weight, metrics=FIDELITY)
        assert {"teacher_kl", "student_ece", "teacher_ece"} <= set(fused[0])
        assert fused[0]["teacher_kl"] > 1e-3 and fused[0]["student_ece"] > 1e-3
        assert_same_step(fused, one_step(family, False, student_loss_weight=weight, metrics=FIDELITY))


def test_fidelity_metrics_without_labels_are_left_out_of_the_fused_steps_logs(monkeypatch):
    monkeypatch.setattr(_fused_head, "CHUNK_ELEMENTS", 5 * VOCABULARY)
    x, _, _ = token_batch([1, 3, 6, 8])
    distiller = keras_kd.Distiller(gpt2(16, 1, "teacher"), gpt2(8, 2, "student"), student_loss_weight=0.0)
    distiller.compile(optimizer="sgd", metrics=FIDELITY)
    assert fused_plan_for(distiller, (x,)) is not None
    logs = distiller.train_on_batch(x, return_dict=True)
    assert "teacher_kl" in logs and "student_ece" not in logs and "teacher_ece" not in logs


def test_one_hot_labels_for_calibration_metrics_take_the_usual_step():
    x, y, weight = token_batch([1, 3, 6, 8])
    one_hot = keras.ops.one_hot(y, VOCABULARY)
    assert fidelity.measurable_by_chunks([fidelity.get("student_ece")], (x, y, weight))
    assert not fidelity.measurable_by_chunks([fidelity.get("student_ece")], (x, one_hot, weight))
    assert fidelity.measurable_by_chunks([fidelity.get("teacher_kl")], (x, one_hot, weight))


@pytest.mark.slow
def test_xla(chunked):
    assert_same_step(one_step("llama", True, jit_compile=True), one_step("llama", False))
    # The fidelity metrics' per-chunk statistics compile too.
    assert_same_step(one_step("llama", True, jit_compile=True, metrics=FIDELITY),
                     one_step("llama", False, metrics=FIDELITY))


@pytest.mark.slow
def test_two_replicas_with_uneven_padding_equal_one_device(two_replicas, monkeypatch):
    monkeypatch.setattr(_fused_head, "CHUNK_ELEMENTS", 5 * VOCABULARY)
    batch = token_batch([8, 7, 2, 1])  # replica 0: 15 tokens, replica 1: 3
    replicated = one_step("gpt2", True, batch=batch, strategy=two_replicas, metrics=FIDELITY)
    assert_same_step(replicated, one_step("gpt2", False, batch=batch, metrics=FIDELITY))


@pytest.mark.slow
def test_mixed_precision_within_the_documented_tolerance():
    keras.config.set_dtype_policy("mixed_float16")
    # float16 logits: the fused and unfused matrix products round apart
    # (measured: values 6e-6 relative, gradients 8e-4 of their scale).
    assert_same_step(one_step("gpt2", True), one_step("gpt2", False), rtol=2e-3)


def test_where_the_fused_head_does_not_apply_the_usual_step_runs_and_says_why():
    teacher, student = gpt2(16, 1, "teacher"), gpt2(8, 2, "student")
    terms = keras_kd.Distiller(teacher, student)._terms
    plan, reason = hard_label.fused_head_plan(False, [teacher], student, terms)
    assert plan is None and reason == "fused_head=False"
    plan, reason = hard_label.fused_head_plan(True, [teacher, teacher], student, terms)
    assert plan is None and reason == "there are several teachers"
    ids = keras.Input((None,), dtype="int32")
    hidden = keras.layers.Embedding(VOCABULARY, 8)(ids)
    relu = keras.Model(ids, keras.layers.Dense(VOCABULARY, activation="relu")(hidden))
    plan, reason = hard_label.fused_head_plan(True, [teacher], relu, terms)
    assert plan is None and "applies the activation relu" in reason
    class ScaledDense(keras.layers.Dense):
        def call(self, inputs):
            return 2.0 * super().call(inputs)

    scaled = keras.Model(ids, ScaledDense(VOCABULARY, name="scaled")(hidden))
    plan, reason = hard_label.fused_head_plan(True, [teacher], scaled, terms)
    assert plan is None and "output layer 'scaled' (ScaledDense) has a `call` of its own" in reason
    regularized = keras.Model(ids, keras.layers.Dense(
        VOCABULARY, activity_regularizer="l2", name="regularized")(hidden))
    plan, reason = hard_label.fused_head_plan(True, [teacher], regularized, terms)
    assert plan is None and "activity regularizer" in reason
    features = keras_kd.Distiller(teacher, student, keras_kd.losses.DKD())
    assert features._fused_head_plan is None
    with pytest.raises(ValueError, match="`fused_head` must be True or False, but received 'yes'"):
        keras_kd.Distiller(teacher, student, fused_head="yes")
    assert keras_kd.Distiller(teacher, student, fused_head=False).get_config()["fused_head"] is False


def test_compiled_metrics_read_the_logits_so_the_usual_step_runs():
    x, y, weight = token_batch([8, 6, 3, 1])
    distiller = keras_kd.Distiller(gpt2(16, 1, "teacher"), gpt2(8, 2, "student"))
    distiller.compile(optimizer="sgd", metrics=["accuracy"],
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    assert fused_plan_for(distiller, (x, y, weight)) is None
    logs = distiller.train_on_batch(x, y, weight, return_dict=True)
    assert "accuracy" in logs
    distiller.compile(optimizer="sgd", weighted_metrics=[],
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    assert fused_plan_for(distiller, (x, y, weight)) is distiller._fused_head_plan


@pytest.mark.slow
def test_the_fused_step_holds_no_batch_by_sequence_by_vocabulary_tensor(monkeypatch):
    """Peak memory of the fused head's forward and backward at batch 4,
    sequence 128, vocabulary 32,000, in (B, S, V) float32 buffers: below
    one (the unfused step holds 2-3, tests/test_lm.py)."""
    batch, sequence, vocabulary, hidden = 4, 128, 32_000, 64
    monkeypatch.setattr(_fused_head, "CHUNK_ELEMENTS", 32 * vocabulary)  # 16 chunks
    heads = []
    for seed in (1, 2):
        keras.utils.set_random_seed(seed)
        layer = keras.layers.Dense(vocabulary)
        layer.build((None, hidden))
        heads.append(_fused_head.Head(None, layer))
    rng = np.random.default_rng(0)
    inputs = [tf.constant(rng.normal(size=(batch, sequence, hidden)), "float32") for _ in range(2)]
    labels = tf.constant(rng.integers(0, vocabulary, (batch, sequence)), "int32")
    loss = keras_kd.LogitsDistillation(temperature=2.0)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            tape.watch(inputs[1])
            values, cross_entropy, _, _ = _fused_head.fused_head_values(
                lambda t, s: loss.per_position(loss._terms, t, s), *heads, *inputs, labels)
            total = tf.reduce_mean(values) + tf.reduce_mean(cross_entropy)
        gradients = tape.gradient(total, [inputs[1], *heads[1].layer.trainable_variables])
        return sum(tf.reduce_sum(g) for g in gradients)

    peak = peak_buffers(step, 4 * batch * sequence * vocabulary)
    assert peak < 0.75, peak


@pytest.mark.slow
def test_the_hard_label_loss_left_out_at_weight_zero_comes_back_when_the_weight_leaves_zero():
    x, y, weight = token_batch([8, 6, 3, 1])
    distiller = keras_kd.Distiller(gpt2(16, 1, "teacher"), gpt2(8, 2, "student"),
                                   keras_kd.losses.ReverseKL(2.0), student_loss_weight=0.0)
    distiller.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    assert fused_plan_for(distiller, (x, y, weight)) is not None
    assert distiller.train_on_batch(x, y, weight, return_dict=True)["student_loss"] == 0.0
    distiller.student_loss_weight.assign(0.5)
    with pytest.raises(tf.errors.InvalidArgumentError, match="student_loss_weight left 0 after the "
                                                             "training step was traced"):
        distiller.train_function(iter([(x, y, weight)]))  # a stale step refuses
    assert distiller.train_on_batch(x, y, weight, return_dict=True)["student_loss"] > 1.0  # retraced


@pytest.mark.slow
def test_the_docs_snippet_runs_through_the_fused_head():
    page = pathlib.Path(__file__).resolve().parent.parent / "docs" / "language_models_fused_head.md"
    snippet = page.read_text().split("```python\n")[1].split("```")[0]
    namespace = {}
    exec(snippet, namespace)  # noqa: S102 - the page's own example
    distiller = namespace["distiller"]
    assert fused_plan_for(distiller, (namespace["x"], namespace["ids"][:, 1:])) is not None
    assert np.isfinite(distiller.history.history["loss"][0])


@pytest.mark.slow
def test_on_policy_batches_train_through_the_fused_head():
    from keras_kd import lm
    from tests.test_lm import generating_pair

    prompts, answers = ["def f", "class A", "x = 1", "if a"], [" return 1", ": pass", "0", " is b"]
    steps = []
    for fused in (True, False):
        teacher, student, preprocessor = generating_pair()
        sharpened(teacher), sharpened(student, 4.0)
        if fused:
            batch = lm.OnPolicyBatches(student, prompts, answers, preprocessor, fraction=0.5, batch_size=4)[0]
        distiller = keras_kd.Distiller(teacher, student, keras_kd.LogitsDistillation(1.0),
                                       student_loss_weight=0.5, fused_head=fused)
        distiller.compile(optimizer=keras.optimizers.SGD(RATE),
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        assert (fused_plan_for(distiller, batch) is not None) == fused
        before = [v.numpy().copy() for v in student.trainable_variables]
        logs = distiller.train_on_batch(*batch, return_dict=True)
        steps.append((logs, [(b - v.numpy()) / RATE for v, b in zip(student.trainable_variables, before)]))
    assert_same_step(*steps)


@pytest.mark.slow
@pytest.mark.parametrize("top_k", [None, 16], ids=["full_logits_cache", "top_k_cache"])
def test_a_teacher_cache_trains_the_student_through_the_fused_head(top_k, monkeypatch):
    monkeypatch.setattr(_fused_head, "CHUNK_ELEMENTS", 5 * VOCABULARY)
    x, y, weight = token_batch([1, 3, 6, 8])
    steps = []
    for fused in (True, False):
        teacher, student = sharpened(gpt2(16, 1, "teacher")), sharpened(gpt2(8, 2, "student"), 4.0)
        distiller = keras_kd.Distiller(teacher, student, keras_kd.LogitsDistillation(1.0),
                                       student_loss_weight=0.4, fused_head=fused)
        distiller.compile(optimizer=keras.optimizers.SGD(RATE), metrics=FIDELITY,
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        dataset = tf.data.Dataset.from_tensor_slices((x, y, weight)).batch(4)
        batch = next(iter(keras_kd.cache_teacher_outputs(distiller, dataset, top_k=top_k, shuffle=False)))
        assert (fused_plan_for(distiller, batch) is not None) == fused
        before = [v.numpy().copy() for v in student.trainable_variables]
        logs = distiller.train_on_batch(*batch, return_dict=True)
        steps.append((logs, [(b - v.numpy()) / RATE for v, b in zip(student.trainable_variables, before)]))
    assert_same_step(*steps)


def test_a_top_k_cache_still_refuses_other_losses_through_the_fused_head():
    x, y, weight = token_batch([1, 3, 6, 8])
    distiller = keras_kd.Distiller(gpt2(16, 1, "teacher"), gpt2(8, 2, "student"),
                                   keras_kd.losses.ReverseKL(1.0), student_loss_weight=0.0)
    distiller.compile(optimizer="sgd")
    dataset = tf.data.Dataset.from_tensor_slices((x, y, weight)).batch(4)
    cached = keras_kd.cache_teacher_outputs(distiller, dataset, top_k=16, shuffle=False)
    assert fused_plan_for(distiller, next(iter(cached))) is not None
    with pytest.raises(ValueError, match="supports the forward KL"):
        distiller.fit(cached, epochs=1, verbose=0, shuffle=False)
