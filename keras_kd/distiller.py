"""`Distiller`: a frozen teacher supervises a student through `fit`."""

import functools

import keras
import tensorflow as tf
from keras import ops

from keras_kd import _keras_compat, _validation, augment, cache, lm, taps, terms
from keras_kd import metrics as fidelity
from keras_kd._validation import as_float, check_number
from keras_kd.losses.base import global_token_count


@keras.saving.register_keras_serializable(package="keras_kd")
class Distiller(keras.Model):
    """Trains `student` to match a frozen `teacher` and the labels.

    A drop-in for `keras.distillation.Distiller` (same arguments, same
    meaning) with the defects of Keras's version fixed: each model runs once
    per step, the teacher in inference mode outside the gradient tape; the
    objective honours `sample_weight` and the student's regularization
    losses, is scaled correctly across `tf.distribute` replicas and under
    mixed precision; every weight and temperature is a `keras.Variable` that
    callbacks may change; a saved Distiller reloads ready to `evaluate` and
    `fit`.

    The objective of one step is

        student_loss_weight * loss(y, student(x), sample_weight)
        + (1 - student_loss_weight) * sum_i w_i * distillation_losses[i]
        + sum(student.losses)

    where `loss` is the one given to `compile`. `sample_weight` weighs the
    hard-label loss. `call` and `predict` are the student's.

    Logged each step: `loss` (the whole objective), `total_loss` (as
    `keras.distillation` logs it: the weighted hard-label and distillation
    terms, without regularization), `student_loss`, `distillation_loss`, one
    entry per distillation term when there are several (under its `name`),
    `teacher_agreement` (the fraction of samples whose top-1 class is the
    teacher's), what a loss asks to log (`CTKD`'s learned temperature as
    `<term>_temperature`), and the compiled metrics on the student's
    predictions.

    Args:
        teacher: a trained `keras.Model`, or a list of them (an ensemble).
            Teachers are frozen (`trainable=False`) and always run with
            `training=False`, each once per step. With several teachers,
            logit losses learn the weighted mixture of the teachers' softened
            distributions (computed in log space), and feature losses name
            the teacher to tap: `"<teacher name>/<layer>"`.
        student: the `keras.Model` to train; after `fit`, `distiller.student`
            is the trained model.
        distillation_losses: a `DistillationLoss` or a list of them. Defaults
            to `LogitsDistillation()`.
        distillation_loss_weights: one weight per distillation loss; defaults
            to 1.0 each.
        student_loss_weight: weight in [0, 1] of the hard-label loss. With 0,
            labels are optional: a dataset of inputs alone trains the student.
        augmentation: consistent augmentation applied to each training batch
            once, before teacher and student see it: a
            `keras_kd.augment.Augmentation` (e.g. `Mixup`), a Keras
            preprocessing layer or callable of the inputs, or a list of these
            applied in order. Not applied by `evaluate`. See `keras_kd.augment`.
        teacher_weights: with several teachers, their weights in the
            mixture (normalized to sum to 1); equal by default.
        vocabulary_alignment: `None` (teacher and student logits must have
            the same size) or `"truncate"`: for language models whose
            vocabularies differ only by padding rows at the end (e.g.
            151,936 vs 152,064 rows for one tokenizer), logits are cut to
            the smaller size before every logit loss and metric.
        name: the model's name.
        **kwargs: passed to `keras.Model`.

    Raises:
        ValueError: if a model is not a `keras.Model`, the student is a
            teacher, shares weights with one or has nothing to train, a
            weight is not finite or out of range, the number of weights
            differs from the number of losses, a loss is incompatible with
            the models or does not return a scalar.

    Example:

    ```python
    distiller = keras_kd.Distiller(
        teacher=teacher, student=student,
        distillation_losses=keras_kd.LogitsDistillation(temperature=4.0),
        student_loss_weight=0.1)
    distiller.compile(optimizer="adam",
                      loss=keras.losses.SparseCategoricalCrossentropy(
                          from_logits=True),
                      metrics=["accuracy"])
    distiller.fit(x_train, y_train, epochs=10)
    distiller.student.save("student.keras")
    ```

    Reference:
        Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural
        Network", arXiv:1503.02531, 2015.
    """

    def __init__(
        self,
        teacher,
        student,
        distillation_losses=None,
        distillation_loss_weights=None,
        student_loss_weight=0.5,
        augmentation=None,
        teacher_weights=None,
        vocabulary_alignment=None,
        name="distiller",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        teachers = list(teacher) if isinstance(teacher, (list, tuple)) else [teacher]
        for model in teachers:
            _validation.check_model(model, "teacher")
        _validation.check_model(student, "student")
        _validation.check_separate_models(teachers, student)
        for model in teachers:
            _validation.check_same_inputs(model, student, _input_shapes)
        losses = terms.as_loss_list(distillation_losses)
        weights = terms.loss_weights(distillation_loss_weights, len(losses))
        logits_size = lm.check_vocabularies(teachers, student, vocabulary_alignment)
        for loss in losses:
            terms.check_loss_fits_models(loss, teachers, student, logits_size is not None)

        self.teacher = teacher
        for model in teachers:
            model.trainable = False
        _validation.check_trainable(student)
        self.teachers = teachers
        self.teacher_weights = terms.as_teacher_weights(teacher_weights, len(teachers))
        self.student = student
        self.distillation_losses = losses
        self.augmentation = augmentation
        self.vocabulary_alignment = vocabulary_alignment
        self._augment = augment.as_augmentation(augmentation)
        self.term_names = terms.unique_names([loss.name for loss in losses])
        self.student_loss_weight = terms.hyperparameter(
            check_number(student_loss_weight, "student_loss_weight", 0.0, 1.0),
            "student_loss_weight",
        )
        self.distillation_loss_weights = [
            terms.hyperparameter(weight, f"{term}_weight")
            for weight, term in zip(weights, self.term_names)
        ]
        self.loss_hyperparameters = terms.make_schedulable(losses, self.term_names)
        self._logits_size = logits_size
        self._terms = [
            terms.Term(loss, term, logits_size, self.teacher_weights)
            for loss, term in zip(losses, self.term_names)
        ]

        # The view that runs the teacher(s) once and taps what the losses
        # read; `cache_teacher_outputs` runs the same view.
        teacher_paths = terms.layer_paths(self._terms, "teacher")
        self.teacher_view = (
            taps.ModelView(teacher, teacher_paths, "teacher")
            if len(teachers) == 1
            else taps.EnsembleView(teachers, teacher_paths)
        )
        self._student_view = taps.ModelView(
            student, terms.layer_paths(self._terms, "student"), "student"
        )
        teacher_spec = self._teacher_spec = self.teacher_view.output_spec()
        student_spec = self._student_view.output_spec()
        self.connectors = terms.build_connectors(self._terms, teacher_spec, student_spec)
        # Variables a loss learns (CTKD's temperature): tracked here, like the
        # connectors, so the optimizer trains them and the Distiller saves them.
        self.loss_layers = {t.name: t.layer for t in self._terms if t.layer is not None}
        self._logged_terms = fidelity.TermMeans(
            ["total_loss", "student_loss", "distillation_loss"]
            + (self.term_names if len(losses) > 1 else [])
            + [f"{t.name}_{attribute}" for t in self._terms for attribute in t.logged]
            + ["teacher_agreement"]
        )
        self.fidelity_metrics = []  # keras_kd.metrics given to compile()
        terms.check_terms_are_scalars(self._terms, teacher_spec, student_spec)
        # Sub-models are built: marking the Distiller built lets `.keras`
        # loading restore the optimizer state and BackupAndRestore run.
        self.built = True

    # ------------------------------------------------------------------ API

    def compile(self, optimizer="adam", loss=None, metrics=None, **kwargs):
        """Configures the student's hard-label loss, metrics and optimizer.

        Args:
            optimizer: the student's optimizer.
            loss: the hard-label loss `loss(y, student(x))`. Required unless
                `student_loss_weight == 0`.
            metrics: metrics of the student's predictions against `y`, and
                fidelity metrics (`keras_kd.metrics`) that the Distiller
                feeds with both models' logits: `"teacher_kl"`,
                `"student_ece"`, `"teacher_ece"` or their instances.
            **kwargs: passed to `keras.Model.compile`.

        A `mixed_float16` student gets its optimizer wrapped in a
        `keras.optimizers.LossScaleOptimizer`, as Keras does for a mixed model.

        Raises:
            ValueError: if `loss` is missing while `student_loss_weight > 0`.
        """
        weight = as_float(self.student_loss_weight)
        if loss is None and weight > 0:
            raise ValueError(
                f"Distiller.compile() received loss=None, but "
                f"student_loss_weight={weight} > 0 needs a hard-label loss. "
                f"Pass the loss your labels need, e.g. loss=keras.losses."
                f"SparseCategoricalCrossentropy(from_logits=True), or build "
                f"the Distiller with student_loss_weight=0.0 to learn from "
                f"the teacher alone."
            )
        optimizer = keras.optimizers.get(optimizer)
        # Emptied in place: Keras untracks what leaves its tracked list, so a
        # re-compile without them does not keep logging stale metrics.
        self.fidelity_metrics.clear()
        found, metrics = fidelity.split_metrics(metrics, kwargs.get("weighted_metrics"))
        self.fidelity_metrics.extend(found)
        if self.student.dtype_policy.name == "mixed_float16" and not isinstance(
            optimizer, keras.optimizers.LossScaleOptimizer
        ):
            # Keras wraps only when the Distiller's own policy is mixed; a
            # mixed_float16 student under a float32 Distiller needs it too.
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        super().compile(
            optimizer=optimizer, loss=loss, metrics=metrics, **kwargs
        )
        self._hard_label_loss_weights = kwargs.get("loss_weights")
        if self.jit_compile and self._augment is not None and not self._augment.supports_jit:
            if kwargs.get("jit_compile") is True:
                raise ValueError(
                    f"jit_compile=True, but the augmentation "
                    f"{self.augmentation!r} cannot be compiled with XLA (e.g. "
                    f"Mixup with alpha != 1 needs gamma sampling, which has "
                    f"no XLA kernel). Use Mixup(alpha=1.0), or "
                    f"jit_compile=False."
                )
            self.jit_compile = False

    def fit(self, x=None, y=None, batch_size=None, sample_weight=None,
            validation_data=None, **kwargs):
        """`keras.Model.fit`; raw text goes through the student's preprocessor.

        When the student carries a KerasHub preprocessor and `x` (or
        `validation_data`) holds strings, like `CausalLM.fit`, each batch is
        preprocessed once in the input pipeline; teacher and student then
        see the same token ids.
        """
        x, y, sample_weight, batch_size = lm.preprocess_text(
            self.student, x, y, sample_weight, batch_size)
        cache.check_top_k_temperatures(x, self._terms)
        epoch_callback = terms.epoch_callback(self._terms)
        if epoch_callback is not None:  # e.g. CTKD's reversal curriculum, by epoch
            kwargs["callbacks"] = [epoch_callback, *(kwargs.get("callbacks") or [])]
        validation_data = lm.preprocess_validation_text(self.student, validation_data, batch_size)
        return super().fit(x, y, batch_size=batch_size, sample_weight=sample_weight,
                           validation_data=validation_data, **kwargs)

    def evaluate(self, x=None, y=None, batch_size=None, sample_weight=None, **kwargs):
        """`keras.Model.evaluate`; raw text goes through the student's preprocessor."""
        x, y, sample_weight, batch_size = lm.preprocess_text(
            self.student, x, y, sample_weight, batch_size)
        cache.check_top_k_temperatures(x, self._terms)
        return super().evaluate(x, y, batch_size=batch_size, sample_weight=sample_weight, **kwargs)

    def make_train_function(self, force=False):
        """Keras's, retraced when `student_loss_weight` left or reached 0
        since the step was traced (the hard-label loss is only in the step
        while its weight is not 0)."""
        traced = getattr(self, "_traced_without_hard_labels", None)
        if traced is not None and traced != (as_float(self.student_loss_weight) == 0):
            force = True
        return super().make_train_function(force=force)

    def get_compile_config(self):
        """Keras's, with the fidelity metrics (which Keras does not see)."""
        config = super().get_compile_config()
        if config is not None and self.fidelity_metrics:
            config["metrics"] = list(config.get("metrics") or []) + [
                keras.saving.serialize_keras_object(m) for m in self.fidelity_metrics
            ]
        return config

    def compile_from_config(self, config):
        """Re-compiles a loaded Distiller, optimizer state included."""
        self.compile(**keras.saving.deserialize_keras_object(config))
        self.optimizer.build(self.trainable_variables)

    def call(self, inputs, training=None):
        inputs, _ = cache.split(inputs)
        return self.student(inputs, training=training)

    def teacher_outputs(self, x):
        """The teacher's outputs for a batch, as the losses read them.

        One forward of each teacher in inference mode.

        Args:
            x: a batch of inputs.

        Returns:
            A `keras_kd.taps.ViewOutputs`: `output`, `logits` and `taps`
            (every layer the losses tap). With several teachers, `output`
            and `logits` are lists, one entry per teacher.
        """
        return self.teacher_view(x, training=False)

    def schedulable_variables(self):
        """Every number a callback may change during `fit`.

        Returns:
            `{name: keras.Variable}`: `"student_loss_weight"`,
            `"<term>.weight"` for each distillation term, and
            `"<term>.<number>"` for each schedulable number of a loss (e.g.
            `"logits_distillation.temperature"`).
        """
        variables = {"student_loss_weight": self.student_loss_weight}
        for term, weight in zip(self._terms, self.distillation_loss_weights):
            variables[f"{term.name}.weight"] = weight
            for attribute in term.schedulable:
                variables[f"{term.name}.{attribute}"] = getattr(term.loss, attribute)
        return variables

    def distillation_outputs(self, x):
        """What each distillation term compares, in inference mode.

        Args:
            x: a batch of inputs.

        Returns:
            `{term name: (teacher value, student value)}` as NumPy arrays,
            the student's after its connector; several teachers' logits are
            mixed at the term's temperature, as in training.
        """
        teacher_outputs = self.teacher_outputs(x)
        student_outputs = self._student_view(x, training=False)
        return {
            term.name: tuple(
                keras.ops.convert_to_numpy(v)
                for v in term.pair(teacher_outputs, student_outputs, training=False)
            )
            for term in self._terms
        }

    # ----------------------------------------------------------------- step

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        x, cached = cache.split(x)
        targets = _targets(y)
        if self._augment is not None:
            if cached is not None:
                raise ValueError(
                    "The batches carry cached teacher outputs, which describe "
                    "the inputs before augmentation, but this Distiller "
                    "augments each batch (augmentation="
                    f"{self.augmentation!r}), so teacher and student would "
                    "see different inputs. Train on the uncached data, or "
                    "build the Distiller without augmentation."
                )
            x, targets = self._augment(x, targets)
        teacher_outputs = self._teacher_outputs(x, cached)
        mask = lm.token_mask(x, sample_weight, teacher_outputs.logits)
        with global_token_count(mask):  # one all-reduce of the token count per step
            with tf.GradientTape() as tape:
                student_outputs = self._student_view(x, training=True)
                values = self._objective(
                    targets, sample_weight, teacher_outputs, student_outputs, True, mask
                )
                # apply_gradients sums over replicas: each replica contributes
                # its share of the global mean.
                loss = _scaled(values["loss"])
                loss = self.optimizer.scale_loss(loss)
            # Top-1 agreement before the backward pass: left to the metrics,
            # its argmaxes could run last and keep both models' logits to the
            # end of the step, where the loss's gradient would reuse their
            # buffers (one more (batch, sequence, vocabulary) buffer, or two).
            agreement = self._teacher_agreement(teacher_outputs, student_outputs, mask)
            with tf.control_dependencies([agreement]):
                seed = tf.ones_like(loss)
            variables = self.trainable_variables
            gradients = tape.gradient(loss, variables, output_gradients=seed)
            self.optimizer.apply_gradients(zip(gradients, variables))
            return self._update_metrics(
                values, x, targets, teacher_outputs, student_outputs, sample_weight, mask, agreement
            )

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        x, cached = cache.split(x)
        teacher_outputs = self._teacher_outputs(x, cached)
        mask = lm.token_mask(x, sample_weight, teacher_outputs.logits)
        with global_token_count(mask):
            student_outputs = self._student_view(x, training=False)
            values = self._objective(
                _targets(y), sample_weight, teacher_outputs, student_outputs, False, mask
            )
            return self._update_metrics(
                values, x, _targets(y), teacher_outputs, student_outputs, sample_weight, mask
            )

    def _objective(
        self, targets, sample_weight, teacher_outputs, student_outputs, training, mask
    ):
        """Every term of the objective, per replica, before any scaling.

        `targets` is a list of `(y, weight)` pairs (see `keras_kd.augment`):
        the hard-label loss sums the loss of each pair.
        """
        weight = ops.cast(self.student_loss_weight, "float32")
        if not targets and _traced_value(self.student_loss_weight) > 0:
            raise ValueError(
                f"The data has no labels, but student_loss_weight="
                f"{_traced_value(self.student_loss_weight)} > 0 needs them. Yield "
                f"(x, y) batches, or build the Distiller with "
                f"student_loss_weight=0.0 to learn from the teacher alone."
            )
        compiled_loss = _keras_compat.compile_loss(self)
        fused = None
        if _traced_value(self.student_loss_weight) != 0:
            fused = terms.fused_term(self._terms, self.loss, self._hard_label_loss_weights,
                                     targets, teacher_outputs, student_outputs, training, mask)
        values = {}
        if fused is not None:
            # One gradient pass for the hard labels and the forward KL.
            values[fused.name], hard_label = terms.fused_values(
                fused, self.loss, targets[0][0], sample_weight, teacher_outputs, student_outputs,
                mask)
            student_loss = _unscaled(hard_label)
            self._traced_without_hard_labels = False
        elif compiled_loss is None or not targets:
            student_loss = _total([])
        elif training and _traced_value(self.student_loss_weight) == 0:
            # Left out of the traced step while its weight is 0 (for a
            # language model, a full-vocabulary cross-entropy and its
            # gradient). make_train_function() retraces when the weight
            # leaves 0; a stale step refuses to run rather than ignore it.
            self._traced_without_hard_labels = True
            check = tf.debugging.assert_equal(
                weight, 0.0,
                message="student_loss_weight left 0 after the training step was "
                "traced without the hard-label loss. Call "
                "distiller.make_train_function(force=True) after changing it, "
                "or change it with keras_kd.callbacks.DistillationScheduler.",
            )
            with tf.control_dependencies([check]):
                student_loss = _total([]) + 0.0
        else:
            if training:
                self._traced_without_hard_labels = False
            # keras.losses.Loss divides by the replica count; undone, so that
            # every term is a plain per-replica mean.
            student_loss = _total([
                _unscaled(ops.cast(compiled_loss(
                    y, student_outputs.output, _combine(sample_weight, target_weight)), "float32"))
                for y, target_weight in targets
            ])
        values = {"student_loss": student_loss, **values}
        weighted = []
        for term, loss_weight in zip(self._terms, self.distillation_loss_weights):
            if term.name not in values:
                values[term.name] = term.value(
                    teacher_outputs, student_outputs, training, targets, mask)
            weighted.append(ops.cast(loss_weight, "float32") * values[term.name])
        values["distillation_loss"] = _total(weighted)
        values["total_loss"] = _total(
            [weight * values["student_loss"], (1.0 - weight) * values["distillation_loss"]]
        )
        regularization = [
            ops.cast(ops.sum(value), "float32") for value in self.student.losses
        ]
        values["loss"] = _total([values["total_loss"]] + regularization)
        return values

    def _teacher_outputs(self, x, cached):
        """The teacher's outputs: from the batch's cache, else one forward."""
        if cached is None:
            return self.teacher_view(x, training=False)
        cache.check_cached_outputs(cached, self._teacher_spec, self._terms)
        return cached

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Keras's, on one replica's part of the first batch (see
        `keras_kd._keras_compat.one_replica_batch`, read from Keras 3.15)."""
        return super()._maybe_symbolic_build(data_batch=_keras_compat.one_replica_batch(
            iterator, data_batch, self.distribute_strategy))

    def get_metrics_result(self):
        """Keras's, leaving out compiled metrics that never saw labels (a
        Distiller trained on unlabelled data)."""
        results = {}
        for metric in self.metrics:
            if not getattr(metric, "built", True):
                continue
            result = metric.result()
            if isinstance(result, dict):
                results.update(result)
            else:
                results[metric.name] = result
        return results

    def _teacher_agreement(self, teacher_outputs, student_outputs, mask):
        return fidelity.teacher_agreement(teacher_outputs.logits, student_outputs.logits, mask,
                                          self.teacher_weights, self._logits_size)

    def _update_metrics(
        self, values, x, targets, teacher_outputs, student_outputs, sample_weight, mask,
        agreement=None,
    ):
        batch_size = ops.cast(ops.shape(keras.tree.flatten(x)[0])[0], "float32")
        if agreement is None:
            agreement = self._teacher_agreement(teacher_outputs, student_outputs, mask)
        values = dict(values, teacher_agreement=agreement)
        for term in self._terms:
            for attribute in term.logged:
                values[f"{term.name}_{attribute}"] = getattr(term.loss, attribute)
        _keras_compat.loss_tracker(self).update_state(values["loss"], sample_weight=batch_size)
        self._logged_terms.update_state(values, batch_size)
        compiled_metrics = _keras_compat.compile_metrics(self)
        if compiled_metrics is not None:
            for y, target_weight in targets:
                compiled_metrics.update_state(
                    y, student_outputs.output, _combine(sample_weight, target_weight)
                )
        unlabelled = fidelity.update_fidelity(
            self.fidelity_metrics, targets, teacher_outputs.logits, student_outputs.logits, mask,
            self.teacher_weights, self._logits_size)
        results = self.get_metrics_result()
        for name in unlabelled:  # ECE without labels is unknown, not 0
            results.pop(name, None)
        return _keras_compat.step_results(results, self.distribute_strategy)

    # --------------------------------------------------------------- config

    def get_config(self):
        config = super().get_config()
        config.update(
            teacher=(
                [_serialize_model(t) for t in self.teachers]
                if isinstance(self.teacher, (list, tuple))
                else _serialize_model(self.teacher)
            ),
            student=_serialize_model(self.student),
            distillation_losses=[
                keras.saving.serialize_keras_object(loss)
                for loss in self.distillation_losses
            ],
            distillation_loss_weights=[
                as_float(w) for w in self.distillation_loss_weights
            ],
            student_loss_weight=as_float(self.student_loss_weight),
            teacher_weights=self.teacher_weights if len(self.teachers) > 1 else None,
            vocabulary_alignment=self.vocabulary_alignment,
            augmentation=keras.tree.map_structure(
                keras.saving.serialize_keras_object, self.augmentation
            ),
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        deserialize = keras.saving.deserialize_keras_object
        for key in ("teacher", "student"):
            if isinstance(config[key], list):
                config[key] = [deserialize(model) for model in config[key]]
            else:
                config[key] = deserialize(config[key])
        config["distillation_losses"] = [
            deserialize(loss) for loss in config["distillation_losses"]
        ]
        augmentation = config.get("augmentation")
        if isinstance(augmentation, list):
            config["augmentation"] = [deserialize(a) for a in augmentation]
        elif augmentation is not None:
            config["augmentation"] = deserialize(augmentation)
        return cls(**config)


# ---------------------------------------------------------------- helpers


def _serialize_model(model):
    """A sub-model's config without its own compile state: the Distiller's
    optimizer is the one that trains the student."""
    config = keras.saving.serialize_keras_object(model)
    config.pop("compile_config", None)
    return config


def _total(values):
    """The sum of a list of scalars (0 for none), without extra ops."""
    return functools.reduce(ops.add, values) if values else ops.zeros((), "float32")


def _scaled(loss):
    """A per-replica loss divided by the replica count (no op on one)."""
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return loss if replicas == 1 else loss / replicas


def _unscaled(loss):
    """The inverse of `_scaled` (keras.losses.Loss values come scaled)."""
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return loss if replicas == 1 else loss * replicas


def _targets(y):
    """The `(y, weight)` list of a batch: empty when it has no labels."""
    return [] if y is None else [(y, None)]


def _combine(sample_weight, target_weight):
    """The product of two optional per-sample weights."""
    if target_weight is None:
        return sample_weight
    if sample_weight is None:
        return target_weight
    return ops.cast(sample_weight, "float32") * ops.cast(target_weight, "float32")


def _traced_value(variable):
    """A variable's current value as a float, also while a step is traced."""
    with tf.init_scope():
        return as_float(variable)


def _input_shapes(model):
    """Shapes (without the batch axis) of a model's inputs, else `None`."""
    signature = taps.input_signature(model)
    if signature is None:
        return None
    return [tuple(spec.shape[1:]) for spec in keras.tree.flatten(signature)]


__all__ = ["Distiller"]
