"""One worker of the MultiWorkerMirroredStrategy test (run as a process).

    python tests/multi_worker_job.py INDEX PORT0,PORT1 OUT.npz [BACKUP_DIR]

Also imported by the test for the single-process reference run.
"""

import json
import os
import sys

GLOBAL_BATCH = 16
EPOCHS = 3


def data():
    import numpy as np

    rng = np.random.default_rng(0)
    return rng.normal(size=(64, 8)).astype("float32"), rng.integers(0, 3, 64)


def run(strategy, callbacks=()):
    """Distils for EPOCHS epochs under `strategy`; returns student weights and logs."""
    import keras
    import numpy as np
    import tensorflow as tf

    import keras_kd

    x, y = data()
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH).with_options(options)
    rng = np.random.default_rng(1)
    with strategy.scope():
        def classifier(width, name):
            inputs = keras.Input((8,))
            hidden = keras.layers.Dense(width, activation="relu")(inputs)
            model = keras.Model(inputs, keras.layers.Dense(3)(hidden), name=name)
            model.set_weights([rng.normal(scale=0.5, size=w.shape).astype("float32")
                               for w in model.get_weights()])
            return model

        distiller = keras_kd.Distiller(classifier(16, "teacher"), classifier(4, "student"),
                                       keras_kd.LogitsDistillation(2.0), student_loss_weight=0.3)
        distiller.compile(optimizer=keras.optimizers.SGD(0.2),
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = distiller.fit(dataset, epochs=EPOCHS, verbose=0, callbacks=list(callbacks)).history
    return [w.numpy() for w in distiller.student.weights], history


def main(index, ports, out, backup_dir=None):
    os.environ["TF_CONFIG"] = json.dumps({
        "cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]},
        "task": {"type": "worker", "index": index},
    })
    import keras
    import numpy as np
    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    callbacks = []
    if backup_dir:
        marker = os.path.join(backup_dir, f"killed_{index}")

        class KillAfterFirstEpoch(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                if epoch == 1 and not os.path.exists(marker):
                    open(marker, "w").close()
                    os._exit(3)  # a crash: no clean-up, no saving

        callbacks = [keras.callbacks.BackupAndRestore(os.path.join(backup_dir, f"worker_{index}")),
                     KillAfterFirstEpoch()]
    weights, history = run(strategy, callbacks)
    np.savez(out, *weights, loss=np.array(history["loss"]))


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2].split(","), sys.argv[3], *sys.argv[4:5])
