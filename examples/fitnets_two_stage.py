"""FitNets' two-stage recipe with a schedule: hints first, then logits.

    python examples/fitnets_two_stage.py [--epochs 20] [--hint-epochs 5]

Stage 1 trains the student's middle layer to predict the teacher's (through a
learnable connector); stage 2 switches the weight to logit distillation. Both
stages run in one `fit`: DistillationScheduler moves the loss weights, which
are variables of the compiled step. Watch them in TensorBoard (logs/).
"""

import argparse

import keras

import keras_kd
from keras_kd.app import datasets, demo
from keras_kd.callbacks import DistillationScheduler


def main(epochs, hint_epochs):
    (x_train, y_train), (x_test, y_test) = datasets.mnist1d()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    teacher = demo.teacher_model()
    teacher.compile(optimizer="adam", loss=loss, metrics=["accuracy"])
    teacher.fit(x_train, y_train, batch_size=128, epochs=epochs, verbose=2)

    distiller = keras_kd.Distiller(
        teacher=teacher, student=demo.student_model(),
        distillation_losses=[
            keras_kd.LogitsDistillation(temperature=4.0),
            keras_kd.FeatureDistillation(teacher_layer_name="conv2", student_layer_name="conv1",
                                         projection="auto"),
        ],
        student_loss_weight=0.0,
    )
    distiller.compile(optimizer="adam", loss=loss, metrics=["accuracy"])
    stages = DistillationScheduler({
        "logits_distillation.weight": lambda epoch: 0.0 if epoch < hint_epochs else 1.0,
        "feature_distillation.weight": lambda epoch: 1.0 if epoch < hint_epochs else 0.0,
    }, verbose=1)
    distiller.fit(x_train, y_train, batch_size=128, epochs=epochs,
                  validation_data=(x_test, y_test), verbose=2,
                  callbacks=[stages, keras.callbacks.TensorBoard("logs")])
    distiller.student.save("student.keras")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--hint-epochs", type=int, default=5)
    args = parser.parse_args()
    main(args.epochs, args.hint_epochs)
