"""What keras.distillation gets wrong and keras_kd gets right, measured.

    python -m benchmarks.correctness

Each row runs the same program against both libraries (only the import
differs) and prints what each returned, next to the correct value.
"""

import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

# Two logical CPU devices, for the replica rows (before TF initializes).
_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(_cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_kd  # noqa: E402
from benchmarks import common  # noqa: E402

LIBRARIES = {"keras_kd": keras_kd, "keras.distillation": keras.distillation}


def pinned_kl(kd, teacher, student, loss=None):
    loss = kd.LogitsDistillation(temperature=1.0, **({"loss": loss} if loss else {}))
    return float(loss.compute_loss(keras.ops.array([teacher]), keras.ops.array([student])))


class Counter(keras.layers.Layer):
    def build(self, shape):
        self.calls = self.add_weight(shape=(), initializer="zeros", trainable=False)

    def call(self, x):
        self.calls.assign_add(1.0)
        return x


def classifier(width, name, counter=None, batch_norm=False):
    inputs = keras.Input((8,))
    x = counter(inputs) if counter else inputs
    x = keras.layers.Dense(width, activation="relu", name="hidden")(x)
    if batch_norm:
        x = keras.layers.BatchNormalization(name="bn")(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="logits")(x), name=name)


def data(n=32):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 8)).astype("float32"), rng.integers(0, 3, n)


def distiller(kd, teacher, student, losses=None, compile_loss=None):
    d = kd.Distiller(teacher=teacher, student=student,
                     distillation_losses=losses or kd.LogitsDistillation(temperature=4.0),
                     student_loss_weight=0.5)
    d.compile(optimizer=keras.optimizers.SGD(0.5),
              loss=compile_loss or keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return d


def update_ratio(kd):
    """|one-step update on 2 replicas| / |same step on 1 device|."""
    keras.utils.set_random_seed(0)
    weights = classifier(16, "t").get_weights(), classifier(4, "s").get_weights()
    x, y = data(16)
    moves = []
    for strategy in (tf.distribute.get_strategy(), tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])):
        with strategy.scope():
            teacher, student = classifier(16, "t"), classifier(4, "s")
            teacher.set_weights(weights[0]), student.set_weights(weights[1])
            d = distiller(kd, teacher, student, compile_loss="sparse_categorical_crossentropy")
        d.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(16), epochs=1, verbose=0)
        moves.append(np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(student.get_weights(), weights[1]))))
    return moves[1] / moves[0]


def forward_counts(kd):
    teacher_counter, student_counter = Counter(), Counter()
    d = distiller(kd, classifier(16, "t", teacher_counter), classifier(4, "s", student_counter),
                  [kd.LogitsDistillation(temperature=4.0),
                   kd.FeatureDistillation(teacher_layer_name="logits", student_layer_name="logits")])
    x, y = data()
    d.fit(x, y, batch_size=32, epochs=1, verbose=0)
    return f"{int(float(teacher_counter.calls))} / {int(float(student_counter.calls))}"


def evaluate_moves_batchnorm(kd):
    student = classifier(4, "s", batch_norm=True)
    d = distiller(kd, classifier(16, "t"), student,
                  [kd.FeatureDistillation(teacher_layer_name="logits", student_layer_name="logits")])
    before = student.get_layer("bn").moving_mean.numpy().copy()
    d.evaluate(*data(), verbose=0)
    return "yes" if not np.array_equal(before, student.get_layer("bn").moving_mean.numpy()) else "no"


def sample_weight_changes_loss(kd):
    d = distiller(kd, classifier(16, "t"), classifier(4, "s"))
    x, y = data()
    plain = d.evaluate(x, y, verbose=0, return_dict=True)["loss"]
    weighted = d.evaluate(x, y, sample_weight=np.r_[np.zeros(16), np.ones(16)], verbose=0,
                          return_dict=True)["loss"]
    return "yes" if abs(plain - weighted) > 1e-6 else "no"


def reload_and_evaluate(kd):
    d = distiller(kd, classifier(16, "t"), classifier(4, "s"))
    x, y = data()
    d.fit(x, y, epochs=1, verbose=0)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "d.keras")
        d.save(path)
        try:
            keras.models.load_model(path).evaluate(x, y, verbose=0)
            return "works"
        except Exception as error:  # noqa: BLE001 - reported as the row's value
            return f"{type(error).__name__}"


ROWS = [
    ("KL, teacher [2,1,0] vs student [0,1,2], T=1, default loss", "1.1504",
     lambda kd: f"{pinned_kl(kd, [2.0, 1.0, 0.0], [0.0, 1.0, 2.0]):.4f}"),
    ("KL, teacher [0,0] vs student [100,-100], T=1, KLDivergence()", "99.3069",
     lambda kd: f"{pinned_kl(kd, [0.0, 0.0], [100.0, -100.0], keras.losses.KLDivergence()):.4f}"),
    ("update on 2 replicas / update on 1 device (same global batch)", "1.00",
     lambda kd: f"{update_ratio(kd):.2f}"),
    ("forward passes per step, teacher / student (one feature pair)", "1 / 1", forward_counts),
    ("evaluate() moves the student's BatchNorm statistics", "no", evaluate_moves_batchnorm),
    ("sample_weight changes the loss", "yes", sample_weight_changes_loss),
    ("saved, reloaded Distiller can evaluate()", "works", reload_and_evaluate),
]


def run():
    rows = []
    for label, correct, measure in ROWS:
        rows.append([label, correct] + [measure(kd) for kd in LIBRARIES.values()])
    return rows


def table(rows):
    return common.markdown_table(["check", "correct", "keras_kd", "keras.distillation"], rows)


if __name__ == "__main__":
    print(common.machine())
    print(table(run()))
