"""Small models and data shared by the tests."""

import keras
import numpy as np


def dense_classifier(width, classes=3, features=8, name=None, **dense_kwargs):
    """A small Functional MLP: Input -> Dense(width, relu) -> Dense(classes)."""
    inputs = keras.Input((features,), name="x")
    hidden = keras.layers.Dense(
        width, activation="relu", name="hidden", **dense_kwargs
    )(inputs)
    logits = keras.layers.Dense(classes, name="logits", **dense_kwargs)(hidden)
    return keras.Model(inputs, logits, name=name)


def toy_data(n=64, features=8, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype("float32")
    y = rng.integers(0, classes, size=n)
    return x, y


def sparse_ce():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)
