"""Distil intermediate features of a wide teacher into a narrow student.

    python examples/feature_distillation.py [--epochs 20]

Teacher and student have different widths and sequence lengths at the tapped
layers; `projection="auto"` builds the learnable connectors (1x1 convolution,
pooling) that the Distiller trains alongside the student and leaves out of it.
"""

import argparse

import keras

import keras_kd
from keras_kd.app import datasets, demo


def student_model():
    layers = keras.layers
    inputs = keras.Input((40, 1))
    x = layers.Conv1D(8, 5, padding="same", activation="relu", name="stage1")(inputs)
    x = layers.Conv1D(16, 5, strides=2, padding="same", activation="relu", name="stage2")(x)
    x = layers.GlobalAveragePooling1D(name="pool")(x)
    return keras.Model(inputs, layers.Dense(10, name="logits")(x), name="student")


def main(epochs):
    (x_train, y_train), (x_test, y_test) = datasets.mnist1d()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    teacher = demo.teacher_model()  # conv1 (40x32) ... conv4 (10x48)
    teacher.compile(optimizer="adam", loss=loss, metrics=["accuracy"])
    teacher.fit(x_train, y_train, batch_size=128, epochs=epochs, verbose=2)

    distiller = keras_kd.Distiller(
        teacher=teacher, student=student_model(),
        distillation_losses=[
            keras_kd.LogitsDistillation(temperature=4.0),
            # 20x16 student map -> 20x32 teacher map: a 1x1 convolution.
            keras_kd.FeatureDistillation(teacher_layer_name="conv2", student_layer_name="stage2",
                                         loss="mse", projection="auto"),
            # 40x8 student map vs 10x48 teacher map: attention maps, pooled to length 10.
            keras_kd.FeatureDistillation(teacher_layer_name="conv4", student_layer_name="stage1",
                                         loss=keras_kd.losses.AttentionTransfer(),
                                         projection="auto"),
        ],
        distillation_loss_weights=[1.0, 0.5, 100.0],
        student_loss_weight=0.5,
    )
    distiller.compile(optimizer="adam", loss=loss, metrics=["accuracy"])
    distiller.fit(x_train, y_train, batch_size=128, epochs=epochs,
                  validation_data=(x_test, y_test), verbose=2)
    print("connectors:", {term: [type(layer).__name__ for layer in c.layers]
                          for term, c in distiller.connectors.items()})
    distiller.student.save("student.keras")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    main(parser.parse_args().epochs)
