"""benchmarks.accuracy: the same-data table's "recipe + planned features" row."""

import types

import keras
import numpy as np

from benchmarks import accuracy
from keras_kd import augment
from keras_kd.app import demo
from keras_kd.losses.logits import LogitsDistillation

RECIPE = "keras_kd recipe: consistent shift + CutMix, T=1, teacher only"
PLANNED = "keras_kd recipe + planned features"


def test_the_planned_features_row_follows_the_recipe_row_in_the_same_data_table():
    rows = accuracy.TABLE_ROWS[accuracy.SAME_DATA]
    assert rows[rows.index(RECIPE) + 1] == PLANNED
    assert rows[-1].startswith("yardstick")


def test_the_planned_features_row_distils_the_planned_pairs_and_trains():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 40, 1)).astype("float32"), rng.integers(0, 10, 64)
    teacher = demo.teacher_model()
    keras.utils.set_random_seed(0)
    initial = demo.student_model().get_weights()  # the row seeds its student the same way

    distiller = accuracy.recipe_distiller(teacher, 1, x, y, 0, planned_features=True)
    logit, *features = distiller.distillation_losses
    assert isinstance(logit, LogitsDistillation) and float(logit.temperature) == 1.0
    assert [(f.name, f.teacher_layer_name, f.student_layer_name, f.loss, f.projection) for f in features] == [
        ("features_20", "conv2", "conv1", "mse", "auto"), ("features_10", "conv4", "conv2", "mse", "auto")]
    assert [float(w) for w in distiller.distillation_loss_weights] == [1.0, 1.0, 1.0]
    assert float(distiller.student_loss_weight) == 0.0
    assert isinstance(distiller.augmentation, augment.Pipeline)  # shift + CutMix, as the recipe row
    history = distiller.history.history
    assert all(np.isfinite(history[name][0]) and history[name][0] > 0 for name in ("features_20", "features_10"))
    assert not any(np.array_equal(a, b) for a, b in zip(initial, distiller.student.get_weights()))

    plain = accuracy.recipe_distiller(teacher, 1, x, y, 0)
    assert [type(loss) for loss in plain.distillation_losses] == [LogitsDistillation]


def test_same_data_seed_trains_the_row_with_the_planned_features(monkeypatch):
    """The table's wiring, with every training replaced by a stand-in."""
    monkeypatch.setattr(demo, "train_on_labels", lambda model, *args, **kwargs: "on labels")
    monkeypatch.setattr(accuracy, "labels_with_recipe_augmentation", lambda *args: "on labels")
    monkeypatch.setattr(accuracy, "logit_kd", lambda library, *args: library)
    monkeypatch.setattr(accuracy, "yardstick", lambda *args: "yardstick")
    monkeypatch.setattr(accuracy, "recipe_distiller", lambda teacher, epochs, x, y, seed, planned_features=False:
                        types.SimpleNamespace(student=f"recipe, planned features {planned_features}"))
    seen = []
    monkeypatch.setattr(demo, "accuracy", lambda model, x, y: seen.append(model) or 0.5)
    results = accuracy.same_data_seed(0, 1)
    assert list(results) == accuracy.ROWS
    models = dict(zip(accuracy.ROWS, seen[::2]))  # validation, then test, per row
    assert models[RECIPE] == "recipe, planned features False"
    assert models[PLANNED] == "recipe, planned features True"
