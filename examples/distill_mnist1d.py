"""Distil a 1-D CNN teacher into a tiny student on MNIST-1D, the Keras way.

    python examples/distill_mnist1d.py [--epochs 10]

MNIST-1D is generated locally (no download). The script trains the teacher
first, then distils it; the student is written to student.keras.
"""

import argparse

import keras
import tensorflow as tf

import keras_kd
from keras_kd.app import datasets, demo


def main(epochs):
    (x_train, y_train), (x_test, y_test) = datasets.mnist1d()
    train_ds = tf.data.Dataset.from_tensor_slices((x_train, y_train)).shuffle(4000).batch(128)
    val_ds = tf.data.Dataset.from_tensor_slices((x_test, y_test)).batch(512)

    teacher = demo.teacher_model()
    teacher.compile(optimizer="adam",
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                    metrics=["accuracy"])
    teacher.fit(train_ds, validation_data=val_ds, epochs=epochs)

    student = demo.student_model()
    distiller = keras_kd.Distiller(
        teacher=teacher, student=student,
        distillation_losses=keras_kd.LogitsDistillation(temperature=4.0),
        student_loss_weight=0.1,
    )
    distiller.compile(optimizer="adam",
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
    distiller.fit(train_ds, validation_data=val_ds, epochs=epochs)
    distiller.student.save("student.keras")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    main(parser.parse_args().epochs)
