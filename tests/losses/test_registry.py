"""The one table of loss names: `get`, `LogitsDistillation(loss=)`,
`FeatureDistillation(loss=)` and the CLI read it, and a name means the same
loss through each."""

import inspect

import keras
import numpy as np
import pytest

import keras_kd
from keras_kd import losses
from keras_kd.app import cli
from keras_kd.losses import divergences
from tests.helpers import loss_value, numpy_kl, numpy_log_softmax

RNG = np.random.default_rng(7)
TEACHER = RNG.normal(scale=2.0, size=(6, 5))
STUDENT = RNG.normal(scale=2.0, size=(6, 5))
LABELS = RNG.integers(0, 5, size=6)
FEATURES_T = RNG.normal(size=(6, 4, 4, 3))
FEATURES_S = RNG.normal(size=(6, 4, 4, 3))
TOKENS_T = RNG.normal(scale=2.0, size=(2, 4, 7))
TOKENS_S = RNG.normal(scale=2.0, size=(2, 4, 7))
TOKEN_MASK = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], "float32")

# What LogitsDistillation(loss=name) applies: a divergence at its own temperature.
APPLIED_BY_LOGITS_DISTILLATION = ["generalized_jsd", "jensen_shannon", "logits_distillation", "logits_mse",
                                  "reverse_kl"]
LOGIT_NAMES = sorted(losses.LOGIT_LOSSES)
FEATURE_NAMES = sorted(losses.FEATURE_LOSSES)


def array(values):
    return keras.ops.array(values, "float32")


def public_loss_classes():
    """Every public class of keras_kd.losses that is a loss (not a base)."""
    return {
        cls for name in losses.__all__
        if inspect.isclass(cls := getattr(losses, name))
        and issubclass(cls, (losses.DistillationLoss, losses.FeatureLoss))
        and cls not in (losses.DistillationLoss, losses.FeatureLoss)
    }


def test_every_public_loss_class_has_exactly_one_name():
    registered = list(losses.LOSSES.values())
    assert sorted(cls.__name__ for cls in registered) == sorted(cls.__name__ for cls in public_loss_classes())
    assert len(set(registered)) == len(registered)


def test_no_name_of_the_table_is_also_a_keras_loss_name():
    for name in losses.LOSSES:
        with pytest.raises(ValueError):
            keras.losses.get(name)


@pytest.mark.parametrize("name", sorted(losses.LOSSES))
def test_get_builds_the_class_of_every_name_with_its_defaults(name):
    cls = losses.LOSSES[name]
    loss = losses.get(name)
    assert type(loss) is cls
    assert losses.name_of(cls) == name
    if issubclass(cls, losses.FeatureLoss):
        value = float(loss(array(FEATURES_T), array(FEATURES_S)))
        assert value == float(cls()(array(FEATURES_T), array(FEATURES_S)))
    elif cls is losses.FeatureDistillation:
        value = loss_value(loss, FEATURES_T, FEATURES_S)
        assert value == pytest.approx(np.mean((FEATURES_T - FEATURES_S) ** 2), rel=1e-5)
    else:
        value = loss_value(loss, TEACHER, STUDENT, labels=array(LABELS))
        assert value == loss_value(cls(), TEACHER, STUDENT, labels=array(LABELS))
    assert np.isfinite(value) and value > 0


def test_a_name_keeps_its_class_defaults_and_the_holder_keeps_its_own():
    # get(name) is the class at its default temperature; LogitsDistillation keeps its 3.0.
    assert losses.get("reverse_kl").temperature == 1.0
    assert keras_kd.LogitsDistillation(loss="reverse_kl").temperature == 3.0
    assert losses.get("logits_distillation").temperature == 3.0
    assert losses.get("dkd").temperature == 4.0


@pytest.mark.parametrize("temperature", [None, 2.5])
@pytest.mark.parametrize("name", APPLIED_BY_LOGITS_DISTILLATION)
def test_a_name_is_the_same_loss_through_get_and_logits_distillation(name, temperature):
    named = losses.get(name)
    if temperature is not None and name != "logits_mse":  # LogitMSE has no temperature
        named = type(named)(temperature=temperature)
    through = keras_kd.LogitsDistillation(temperature=temperature or getattr(named, "temperature", 1.0), loss=name)
    assert loss_value(through, TEACHER, STUDENT) == pytest.approx(loss_value(named, TEACHER, STUDENT), rel=1e-6)
    masked = dict(mask=array(TOKEN_MASK))
    assert loss_value(through, TOKENS_T, TOKENS_S, **masked) == pytest.approx(
        loss_value(named, TOKENS_T, TOKENS_S, **masked), rel=1e-6)


def test_logits_distillation_by_name_at_a_temperature_against_numpy():
    # reverse KL at T = 2: T² KL(q ‖ p), in float64.
    through = keras_kd.LogitsDistillation(temperature=2.0, loss="reverse_kl")
    assert loss_value(through, TEACHER, STUDENT) == pytest.approx(numpy_kl(STUDENT, TEACHER, 2.0), rel=1e-5)


@pytest.mark.parametrize("name", sorted(set(LOGIT_NAMES) - set(APPLIED_BY_LOGITS_DISTILLATION)))
def test_logits_distillation_refuses_the_names_of_losses_with_settings_of_their_own(name):
    cls = losses.LOSSES[name].__name__
    with pytest.raises(ValueError, match=(
            rf"`loss='{name}'` names keras_kd.losses.{cls}, which LogitsDistillation cannot apply: it is a "
            rf"distillation loss with settings of its own. Pass it to the Distiller as a term of its own: "
            rf"distillation_losses=\[keras_kd.losses.{cls}\(...\)\]. LogitsDistillation's `loss` takes one of "
            rf"\['generalized_jsd', 'jensen_shannon', 'logits_distillation', 'logits_mse', 'reverse_kl'\] or a "
            rf"keras.losses name.")):
        keras_kd.LogitsDistillation(loss=name)


@pytest.mark.parametrize("name", FEATURE_NAMES)
def test_logits_distillation_refuses_feature_loss_names(name):
    with pytest.raises(ValueError, match=(
            rf"`loss='{name}'` names keras_kd.losses.\w+, which LogitsDistillation cannot apply: it is a "
            rf"feature loss. Use keras_kd.FeatureDistillation\(loss='{name}', teacher_layer_name=..., ")):
        keras_kd.LogitsDistillation(loss=name)


@pytest.mark.parametrize("name", FEATURE_NAMES + ["feature_distillation"])
def test_a_name_is_the_same_loss_through_get_and_feature_distillation(name):
    named = losses.get(name)
    through = keras_kd.FeatureDistillation(loss=name)
    expected = (loss_value(named, FEATURES_T, FEATURES_S) if name == "feature_distillation"
                else float(named(array(FEATURES_T), array(FEATURES_S))))
    assert loss_value(through, FEATURES_T, FEATURES_S) == expected


@pytest.mark.parametrize("name", LOGIT_NAMES)
def test_feature_distillation_refuses_logit_loss_names(name):
    cls = losses.LOSSES[name].__name__
    with pytest.raises(ValueError, match=(
            rf"`loss='{name}'` names keras_kd.losses.{cls}, which FeatureDistillation cannot apply: it is a "
            rf"distillation loss with settings of its own.*FeatureDistillation's `loss` takes one of "
            rf"\['attention', 'cosine', 'feature_distillation', 'hint', 'pkt', 'rkd_angle', 'rkd_distance', "
            rf"'similarity'\] or a keras.losses name.")):
        keras_kd.FeatureDistillation(loss=name)


@pytest.mark.parametrize("name", [n for n in cli.FEATURE_LOSSES if n != "mse"])
def test_a_name_is_the_same_loss_through_get_and_the_cli(name):
    assert name in losses.LOSSES
    term = cli.feature_loss(f"conv2:conv1:{name}")
    value = float(term.compute_loss(array(FEATURES_T), array(FEATURES_S)))
    assert value == float(losses.get(name)(array(FEATURES_T), array(FEATURES_S)))


def test_the_cli_reads_its_names_from_the_table():
    assert cli.FEATURE_LOSSES == ("mse", *losses.FEATURE_LOSSES)
    assert list(cli.CONFIG_CLASSES) == sorted(
        cls.__name__ for cls in losses.LOSSES.values() if issubclass(cls, losses.DistillationLoss))


@pytest.mark.parametrize("name", LOGIT_NAMES)
def test_a_logit_loss_of_the_table_is_the_same_through_a_cli_config(name):
    named = losses.get(name)
    built = cli.config_loss(keras.saving.serialize_keras_object(named), 0, "config.json")
    assert type(built) is type(named)
    labels = array(LABELS)
    assert loss_value(built, TEACHER, STUDENT, labels=labels) == loss_value(named, TEACHER, STUDENT, labels=labels)


@pytest.mark.parametrize(
    "make, message",
    [(lambda: losses.get("reverse_kld"),
      r"Unknown loss name 'reverse_kld'. keras_kd's names: feature losses \['attention', 'cosine', "
      r"'feature_distillation', 'hint', 'pkt', 'rkd_angle', 'rkd_distance', 'similarity'\], logit losses "
      r"\['ctkd', 'dist', 'dkd', 'generalized_jsd', 'jensen_shannon', 'logit_standardization', "
      r"'logits_distillation', 'logits_mse', 'mlkd', 'reverse_kl'\]; any keras.losses name works too"),
     (lambda: keras_kd.LogitsDistillation(loss="generalised_jsd"),
      r"Unknown loss name 'generalised_jsd'. keras_kd's names here: \['generalized_jsd', 'jensen_shannon', "
      r"'logits_distillation', 'logits_mse', 'reverse_kl'\]; any keras.losses name works too"),
     (lambda: cli.feature_loss("conv2:conv1:atention"),
      r"Unknown feature loss 'atention' in --feature 'conv2:conv1:atention'. Use one of: mse, hint, cosine, "
      r"attention, similarity, rkd_distance, rkd_angle, pkt.")],
    ids=["get", "LogitsDistillation", "cli"],
)
def test_a_misspelled_name_lists_the_valid_ones(make, message):
    with pytest.raises((ValueError, cli.UsageError), match=message):
        make()


def test_the_old_second_name_js_still_works_with_a_deprecation_warning():
    with pytest.warns(DeprecationWarning, match=r"The loss name 'js' is deprecated; use 'jensen_shannon'"):
        old = losses.get("js")
    assert type(old) is losses.JensenShannon
    with pytest.warns(DeprecationWarning, match=r"'js' is deprecated"):
        through = keras_kd.LogitsDistillation(temperature=2.0, loss="js")
    assert loss_value(through, TEACHER, STUDENT) == loss_value(losses.JensenShannon(2.0), TEACHER, STUDENT)


# ------------------------------------------------------- the plain functions


def test_divergences_are_unreduced_and_match_numpy():
    log_p, log_q = numpy_log_softmax(TOKENS_T / 2.0), numpy_log_softmax(TOKENS_S / 2.0)
    p, q = np.exp(log_p), np.exp(log_q)
    m = 0.5 * (p + q)
    expected = {
        "kl_divergence": (p * (log_p - log_q)).sum(-1),
        "reverse_kl": (q * (log_q - log_p)).sum(-1),
        "jensen_shannon": 0.5 * (p * np.log(p / m)).sum(-1) + 0.5 * (q * np.log(q / m)).sum(-1),
        "soft_cross_entropy": -(p * log_q).sum(-1),
    }
    for name, values in expected.items():
        got = getattr(divergences, name)(array(log_p), array(log_q))
        assert tuple(got.shape) == (2, 4), name
        np.testing.assert_allclose(got, values, rtol=1e-5, atol=1e-6, err_msg=name)


def test_dkd_function_times_t_squared_is_the_dkd_class():
    log_p, log_q = (divergences.log_softmax_at(array(z), 4.0) for z in (TEACHER, STUDENT))
    per_sample = divergences.dkd(log_p, log_q, keras.ops.array(LABELS, "int32"), alpha=1.0, beta=8.0)
    assert tuple(per_sample.shape) == (6,)
    assert float(np.mean(per_sample) * 16.0) == pytest.approx(
        loss_value(losses.DKD(), TEACHER, STUDENT, labels=array(LABELS)), rel=1e-6)
