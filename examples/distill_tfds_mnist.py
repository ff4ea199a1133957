"""Distil a CNN teacher into a small student on MNIST from tensorflow-datasets.

    python examples/distill_tfds_mnist.py [--epochs 3]

Downloads MNIST through tensorflow-datasets on first use (needs internet).
"""

import argparse

import keras
import tensorflow as tf
import tensorflow_datasets as tfds

import keras_kd


def load_data(batch_size=128):
    """MNIST train and test splits as batched (image, label) datasets."""

    def prepare(split):
        ds = tfds.load("mnist", split=split, as_supervised=True)
        ds = ds.map(lambda image, label: (tf.cast(image, "float32") / 255.0, label))
        if split == "train":
            ds = ds.shuffle(10_000)
        return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)

    return prepare("train"), prepare("test")


def cnn(channels, hidden, name):
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            layers.Conv2D(channels, 3, activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(2 * channels, 3, activation="relu"),
            layers.MaxPooling2D(),
            layers.Flatten(),
            layers.Dense(hidden, activation="relu"),
            layers.Dense(10),
        ],
        name=name,
    )


def main(epochs):
    train_ds, test_ds = load_data()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    teacher = cnn(32, 128, "teacher")
    teacher.compile(optimizer="adam", loss=loss, metrics=["accuracy"])
    teacher.fit(train_ds, validation_data=test_ds, epochs=epochs)

    distiller = keras_kd.Distiller(
        teacher=teacher, student=cnn(4, 16, "student"),
        distillation_losses=keras_kd.LogitsDistillation(temperature=4.0),
        student_loss_weight=0.1,
    )
    distiller.compile(optimizer="adam", loss=loss, metrics=["accuracy"])
    distiller.fit(train_ds, validation_data=test_ds, epochs=epochs)
    distiller.student.save("student.keras")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    main(parser.parse_args().epochs)
