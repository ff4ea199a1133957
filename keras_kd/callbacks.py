"""Schedules for temperature and loss weights, and distillation histograms.

Everything the training step returns (`loss`, `student_loss`,
`distillation_loss`, each term, `teacher_agreement`, compiled metrics) is
already written by the stock `keras.callbacks.TensorBoard`; this module adds
only what it cannot: moving the Distiller's knobs during `fit`, and
histograms of what teacher and student produce.
"""

import json
import os
import re

import keras
import numpy as np
import tensorflow as tf

from keras_kd import _files
from keras_kd._validation import as_float, check_temperature
from keras_kd.calibration import softmax


class DistillationScheduler(keras.callbacks.Callback):
    """Sets temperatures and loss weights by epoch or step, like
    `keras.callbacks.LearningRateScheduler`.

    Each schedule is a callable of the epoch (or of the optimizer's step
    count, with `per="step"`) returning the value: a Python function, or any
    `keras.optimizers.schedules.LearningRateSchedule` for the common shapes —
    `PolynomialDecay(0.0, n, 1.0)` is a linear warm-up from 0 to 1 over `n`,
    `CosineDecay(...)` a cosine, `PiecewiseConstantDecay(...)` steps. Values
    are assigned to the Distiller's `keras.Variable`s, so they act inside the
    compiled step, and are written into `logs` (put this callback before
    `TensorBoard` or `CSVLogger` in the list, so they record them).

    Targets (keys of `schedules`):

    - `"student_loss_weight"`;
    - `"distillation_loss_weights[i]"` or `"<term>.weight"`;
    - `"<term>.<number>"` for a loss's schedulable number, e.g.
      `"logits_distillation.temperature"` or `"dkd.beta"`;
    - `"temperature"` when exactly one loss has a temperature.

    `<term>` is the name the term is logged under (`distiller.term_names`).

    Args:
        schedules: `{target: callable}`.
        per: `"epoch"` (at the start of each epoch) or `"step"` (before each
            training batch, from `optimizer.iterations`, so a resumed run
            continues its schedule).
        verbose: 1 prints the values at each epoch start.

    Raises:
        ValueError: at the start of `fit`, if a target names nothing.

    Example:

    ```python
    # FitNets: hints only for 10 epochs, then logits only.
    hints_then_logits = keras_kd.callbacks.DistillationScheduler({
        "feature_distillation.weight": lambda epoch: 1.0 if epoch < 10 else 0.0,
        "logits_distillation.weight": lambda epoch: 0.0 if epoch < 10 else 1.0,
    })
    ```
    """

    def __init__(self, schedules, per="epoch", verbose=0):
        super().__init__()
        if per not in ("epoch", "step"):
            raise ValueError(f"`per` must be 'epoch' or 'step', but received {per!r}.")
        for target, schedule in schedules.items():
            if not callable(schedule):
                raise ValueError(
                    f"The schedule of '{target}' must be a callable of the "
                    f"{per} (a function or a keras.optimizers.schedules "
                    f"object), but received {schedule!r}."
                )
        self.schedules = dict(schedules)
        self.per = per
        self.verbose = verbose
        self._variables = None

    def on_train_begin(self, logs=None):
        self._variables = {
            target: schedulable_variable(self.model, target) for target in self.schedules
        }
        if self.per == "step":
            self._assign(int(self.model.optimizer.iterations.numpy()))

    def on_epoch_begin(self, epoch, logs=None):
        if self.per == "epoch":
            self._assign(epoch)
        if self.verbose:
            values = ", ".join(f"{t}={as_float(v):.4g}" for t, v in self._variables.items())
            print(f"\nEpoch {epoch + 1}: DistillationScheduler sets {values}.")

    def on_train_batch_begin(self, batch, logs=None):
        if self.per == "step":
            self._assign(int(self.model.optimizer.iterations.numpy()))

    def on_train_batch_end(self, batch, logs=None):
        self._log(logs)

    def on_epoch_end(self, epoch, logs=None):
        self._log(logs)

    def _assign(self, position):
        for target, variable in self._variables.items():
            value = float(keras.ops.convert_to_numpy(self.schedules[target](position)))
            if target.endswith("temperature"):
                check_temperature(value, f"schedule of '{target}' at {self.per} {position}")
            variable.assign(value)
        # Retraces the step if the hard-label loss enters or leaves it.
        self.model.make_train_function()

    def _log(self, logs):
        if logs is not None:
            for target, variable in self._variables.items():
                logs[target] = as_float(variable)


def schedulable_variable(distiller, target):
    """The Distiller's variable a schedule target names.

    Args:
        distiller: a `keras_kd.Distiller`.
        target: see `DistillationScheduler`.

    Returns:
        A non-trainable `keras.Variable`.

    Raises:
        ValueError: if `target` names nothing, listing the valid targets.
    """
    variables = distiller.schedulable_variables()
    if target in variables:
        return variables[target]
    weights = distiller.distillation_loss_weights
    indexed = re.fullmatch(r"distillation_loss_weights\[(\d+)\]", target)
    if indexed and int(indexed.group(1)) < len(weights):
        return weights[int(indexed.group(1))]
    temperatures = [v for name, v in variables.items() if name.endswith(".temperature")]
    if target == "temperature" and len(temperatures) == 1:
        return temperatures[0]
    valid = list(variables) + [f"distillation_loss_weights[{i}]" for i in range(len(weights))]
    raise ValueError(
        f"DistillationScheduler target '{target}' names nothing in this "
        f"Distiller. Valid targets: {valid}."
    )


class EpochBackup(keras.callbacks.Callback):
    """The model's weights and optimizer state after each epoch, written
    atomically, and restored to resume an interrupted `fit`.

    `keras.callbacks.BackupAndRestore` writes its weights file in place: a
    full disk or a kill mid-write leaves a truncated HDF5 file (h5py errors,
    even a crash, on the next start). Here each epoch's weights go to a
    temporary name, then `epoch-N.weights.h5`; only then does the record
    (`training_metadata.json`, `{"epoch": N, "weights": name}`) move to
    name them, so a resume finds the last complete epoch, never half of one.
    Free space is checked before each write.

    Args:
        folder: the backup folder (created at the first save).

    Example:

    ```python
    backup = keras_kd.callbacks.EpochBackup("run/backup")
    distiller.fit(data, epochs=10, initial_epoch=backup.restore(distiller), callbacks=[backup])
    ```
    """

    RECORD = "training_metadata.json"

    def __init__(self, folder):
        super().__init__()
        self.folder = os.fspath(folder)

    def restore(self, model):
        """Loads the last complete epoch's weights into `model`.

        Writes a crash left unfinished are removed first. Call before
        `fit`, after `compile`, and pass the result as `initial_epoch`.

        Args:
            model: the compiled model being trained.

        Returns:
            The number of epochs the backup holds (0 if there is none).

        Raises:
            ValueError: if the record names a weights file that is missing
                or cannot be loaded.
        """
        _files.remove_partial_writes(self.folder)
        record = os.path.join(self.folder, self.RECORD)
        if not os.path.exists(record):
            return 0
        with open(record) as file:
            saved = json.load(file)
        weights = os.path.join(self.folder, str(saved.get("weights")))
        if not os.path.isfile(weights):
            raise ValueError(f"The backup '{self.folder}' names the weights file '{weights}', which does "
                             f"not exist. Start over without it (keras-kd: --force).")
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)  # its state is in the file
        model.load_weights(weights)
        return int(saved["epoch"])

    def on_epoch_end(self, epoch, logs=None):
        self.save(epoch + 1)

    def save(self, epochs):
        """Writes the weights after `epochs` epochs, then the record naming them.

        Raises:
            keras_kd._files.WriteFailed: if the disk is full or the write
                fails; the message says which backup was kept.
        """
        os.makedirs(self.folder, exist_ok=True)
        name = f"epoch-{epochs}.weights.h5"
        record = os.path.join(self.folder, self.RECORD)
        kept = None
        try:
            if os.path.exists(record):
                with open(record) as file:
                    kept = json.load(file).get("epoch")
            needed = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in self.model.variables + (
                self.model.optimizer.variables if self.model.optimizer else []))
            _files.check_free_space(self.folder, int(needed * 1.1) + 2**20)
            with _files.atomic_path(os.path.join(self.folder, name), force=True) as partial:
                self.model.save_weights(partial)
            with _files.atomic_path(record, force=True) as partial, open(partial, "w") as file:
                json.dump({"epoch": epochs, "weights": name}, file)
        except OSError as error:
            kept = (f"the backup of epoch {kept} is kept in '{self.folder}'" if kept else
                    "no earlier backup exists")
            raise _files.WriteFailed(
                error.errno, f"Cannot write the backup of epoch {epochs} in '{self.folder}' "
                f"({error.strerror or error}): {kept}; nothing else was written. Free space and "
                f"resume (keras-kd: --resume).") from error
        for other in os.listdir(self.folder):
            if other.startswith("epoch-") and other.endswith(".weights.h5") and other != name:
                os.remove(os.path.join(self.folder, other))


class DistillationHistograms(keras.callbacks.Callback):
    """Every N epochs, histograms of what teacher and student produce.

    For each logit term: the teacher's and the student's softened class
    probabilities; for each feature term: the absolute error between the
    teacher feature and the (connector-mapped) student feature, or both
    features when their shapes differ (attention and relation losses). Computed in
    inference mode on `data`, written with `tf.summary` to
    `<log_dir>/train`, next to the stock TensorBoard callback's scalars.

    Args:
        log_dir: the TensorBoard log folder (the same as `TensorBoard`'s).
        data: a batch of inputs (NumPy array or tensor) to compute them on.
        every_n_epochs: how often.

    Example:

    ```python
    distiller.fit(..., callbacks=[
        keras.callbacks.TensorBoard("logs"),
        keras_kd.callbacks.DistillationHistograms("logs", x_val[:256]),
    ])
    ```
    """

    def __init__(self, log_dir, data, every_n_epochs=1):
        super().__init__()
        self.log_dir = log_dir
        self.data = data
        self.every_n_epochs = every_n_epochs
        self._writer = None

    def on_train_begin(self, logs=None):
        self._writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "train"))

    def on_epoch_end(self, epoch, logs=None):
        if epoch % self.every_n_epochs:
            return
        pairs = self.model.distillation_outputs(self.data)
        with self._writer.as_default(step=epoch):
            for term, (teacher, student) in pairs.items():
                loss = dict(zip(self.model.term_names, self.model.distillation_losses))[term]
                if getattr(loss, "expects_logits", False) and getattr(loss, "teacher_layer_name", None) is None:
                    temperature = as_float(getattr(loss, "temperature", 1.0))
                    tf.summary.histogram(f"{term}/teacher_probabilities", softmax(teacher, temperature))
                    tf.summary.histogram(f"{term}/student_probabilities", softmax(student, temperature))
                elif teacher.shape == student.shape:
                    tf.summary.histogram(f"{term}/feature_error", np.abs(teacher - student))
                else:  # e.g. attention or relation losses: shapes need not match
                    tf.summary.histogram(f"{term}/teacher_feature", teacher)
                    tf.summary.histogram(f"{term}/student_feature", student)
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()


__all__ = [
    "DistillationHistograms",
    "DistillationScheduler",
    "EpochBackup",
    "schedulable_variable",
]
