"""keras_kd.app.demo: the recipe's options and the rule that picks them."""

import pytest

import keras_kd
from keras_kd import augment
from keras_kd.app import demo
from keras_kd.losses.logits import LogitsDistillation


def test_recipe_keeps_augmentation_while_inputs_are_scarce_and_drops_it_when_plentiful():
    assert demo.recipe_settings(3600) == {"augmentation": "shift + CutMix", "temperature": 1.0,
                                          "standardize": False}
    few = demo.PLENTIFUL_INPUTS * 3600 - 1
    assert demo.recipe_settings(3600, few)["augmentation"] == "shift + CutMix"
    assert demo.recipe_settings(3600, 36_400) == {"augmentation": "none", "temperature": 2.0,
                                                  "standardize": True}


def test_recipe_augmentation_kinds():
    assert isinstance(demo.recipe_augmentation(0), augment.Pipeline)
    assert isinstance(demo.recipe_augmentation(0, "shift"), augment.RandomShift)
    assert demo.recipe_augmentation(0, "none") is None
    with pytest.raises(ValueError, match="Unknown augmentation 'flip'"):
        demo.recipe_augmentation(0, "flip")


def test_distiller_recipe_takes_augmentation_and_temperature():
    distiller = demo.distiller_recipe(demo.teacher_model(), demo.student_model(), 1, 64,
                                      augmentation="none", temperature=2.0, standardize=True)
    assert distiller.augmentation is None
    assert float(distiller.distillation_losses[0].temperature) == 2.0
    assert distiller.distillation_losses[0].standardize


def test_distiller_recipe_adds_the_given_feature_losses_after_its_logit_loss():
    teacher, student = demo.teacher_model(), demo.student_model()
    alone = demo.distiller_recipe(teacher, student, 1, 64)
    assert [type(loss) for loss in alone.distillation_losses] == [LogitsDistillation]
    assert set(alone.connectors) == set()

    teacher, student = demo.teacher_model(), demo.student_model()
    planned = keras_kd.plan_features(teacher, student)
    distiller = demo.distiller_recipe(teacher, student, 1, 64, features=planned)
    assert isinstance(distiller.distillation_losses[0], LogitsDistillation)
    assert distiller.distillation_losses[1:] == planned
    assert [float(w) for w in distiller.distillation_loss_weights] == [1.0, 1.0, 1.0]
    assert float(distiller.student_loss_weight) == 0.0
    assert isinstance(distiller.augmentation, augment.Pipeline)
    assert set(distiller.connectors) == {"features_20", "features_10"}
