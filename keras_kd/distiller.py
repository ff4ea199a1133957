"""`Distiller`: a frozen teacher supervises a student through `fit`."""

import keras
import tensorflow as tf
from keras import ops

from keras_kd import _keras_compat, _validation, augment, cache, fit_data, hard_label, lm, taps, terms
from keras_kd import metrics as fidelity
from keras_kd._validation import as_float, check_flag, check_number
from keras_kd.hard_label import total, traced_value
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
        fused_head: for language models whose logits are a projection of
            final hidden states (KerasHub causal LMs such as GPT-2, Gemma,
            Llama; a final `Dense`), compute the distillation term, the
            hard-label cross-entropy and `teacher_agreement` a chunk of
            tokens at a time from the hidden states, so that no
            `(batch, sequence, vocabulary)` logits exist in a training step
            (same values and gradients). On by default where it applies
            (one teacher, one per-position logit loss, no compiled or
            fidelity metrics, no augmentation; a teacher cache's logits or
            top-K are read a chunk at a time too; see
            docs/language_models_fused_head.md); elsewhere the usual step
            runs. `False` always runs the usual step.
        name: the model's name.
        **kwargs: passed to `keras.Model`.

    Raises:
        ValueError: if a model is not a `keras.Model`, the student is a
            teacher, shares weights with one or has nothing to train, a
            weight is not finite or out of range, the number of weights
            differs from the number of losses, a loss is incompatible with
            the models or does not return a scalar, or teacher and student
            tokenizers map a token id to different tokens.

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

    def __init__(self, teacher, student, distillation_losses=None, distillation_loss_weights=None,
                 student_loss_weight=0.5, augmentation=None, teacher_weights=None,
                 vocabulary_alignment=None, fused_head=True, name="distiller", **kwargs):
        super().__init__(name=name, **kwargs)
        teachers = list(teacher) if isinstance(teacher, (list, tuple)) else [teacher]
        for model in teachers:
            _validation.check_model(model, "teacher")
            _validation.check_built(model, "teacher", "it would teach the random outputs of its first call", False)
        _validation.check_model(student, "student")
        _validation.check_separate_models(teachers, student)
        for model in teachers:
            _validation.check_same_inputs(model, student, taps.input_shapes)
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
        self._terms = terms.make_terms(losses, self.term_names, logits_size, self.teacher_weights)
        self.fused_head = check_flag(fused_head, "fused_head")
        self._fused_head_plan, _ = hard_label.fused_head_plan(
            self.fused_head, teachers, student, self._terms)
        # The view that runs the teacher(s) once and taps what the losses
        # read; `cache_teacher_outputs` runs the same view.
        self.teacher_view = taps.view(teachers, terms.layer_paths(self._terms, "teacher"), "teacher")
        self._student_view = taps.view([student], terms.layer_paths(self._terms, "student"), "student")
        teacher_spec = self._teacher_spec = self.teacher_view.output_spec()
        student_spec = self._student_view.output_spec()
        self.connectors = terms.build_connectors(self._terms, teacher_spec, student_spec)
        # Variables a loss learns (CTKD's temperature): tracked here, like the
        # connectors, so the optimizer trains them and the Distiller saves them.
        self.loss_layers = {t.name: t.layer for t in self._terms if t.layer is not None}
        self._logged_terms = fidelity.TermMeans(terms.logged_names(self._terms))
        self.fidelity_metrics = []  # keras_kd.metrics given to compile()
        terms.check_terms_are_scalars(self._terms, teacher_spec, student_spec)
        self._weightless_batches = lm.WeightlessBatchWarning()  # counted in train_step; a callback of fit
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
        hard_label.check_compiled(loss, as_float(self.student_loss_weight))
        optimizer = keras.optimizers.get(optimizer)
        metrics = fidelity.take_fidelity_metrics(self.fidelity_metrics, metrics, kwargs.get("weighted_metrics"))
        optimizer = _keras_compat.loss_scale_optimizer(optimizer, self.student)
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)
        self._hard_label_loss_weights = kwargs.get("loss_weights")
        if self.jit_compile and not augment.compiles_with_xla(self._augment, self.augmentation,
                                                              kwargs.get("jit_compile")):
            self.jit_compile = False

    def fit(self, x=None, y=None, batch_size=None, sample_weight=None,
            validation_data=None, **kwargs):
        """`keras.Model.fit`; raw text goes through the student's preprocessor.

        When the student carries a KerasHub preprocessor and `x` (or
        `validation_data`) holds strings, like `CausalLM.fit`, each batch is
        preprocessed once in the input pipeline; teacher and student then
        see the same token ids.
        """
        x, y, sample_weight, batch_size, validation_data = fit_data.for_fit(
            self, x, y, sample_weight, batch_size, validation_data, kwargs.get("callbacks"))
        epoch_callback = terms.epoch_callback(self._terms)
        if epoch_callback is not None:  # e.g. CTKD's reversal curriculum, by epoch
            kwargs["callbacks"] = [epoch_callback, *(kwargs.get("callbacks") or [])]
        kwargs["callbacks"] = self._weightless_batches.added_to(kwargs.get("callbacks"))
        return super().fit(x, y, batch_size=batch_size, sample_weight=sample_weight,
                           validation_data=validation_data, **kwargs)

    def evaluate(self, x=None, y=None, batch_size=None, sample_weight=None, **kwargs):
        """`keras.Model.evaluate`; raw text goes through the student's preprocessor."""
        x, y, sample_weight, batch_size = fit_data.for_evaluate(self, x, y, sample_weight, batch_size)
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
        return fidelity.with_fidelity_metrics(super().get_compile_config(), self.fidelity_metrics)

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
        return terms.schedulable_variables(
            self.student_loss_weight, self._terms, self.distillation_loss_weights)

    def distillation_outputs(self, x):
        """What each distillation term compares, in inference mode.

        Args:
            x: a batch of inputs.

        Returns:
            `{term name: (teacher value, student value)}` as NumPy arrays,
            the student's after its connector; several teachers' logits are
            mixed at the term's temperature, as in training.
        """
        outputs = self.teacher_outputs(x), self._student_view(x, training=False)
        return {term.name: tuple(keras.ops.convert_to_numpy(v) for v in term.pair(*outputs, training=False))
                for term in self._terms}

    # ----------------------------------------------------------------- step

    def train_step(self, data):
        has_metrics = (_keras_compat.has_compiled_metrics(self)
                       or not fidelity.measurable_by_chunks(self.fidelity_metrics, data))
        plan = hard_label.fused_head_for(self._fused_head_plan, self._augment, data, self.loss,
                                         self._hard_label_loss_weights,
                                         traced_value(self.student_loss_weight), has_metrics)
        if plan is not None:
            return self._fused_head_step(plan, data)
        x, targets, sample_weight, teacher_outputs, mask = self._batch(data, training=True)
        self._weightless_batches.count(mask)
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

    def _fused_head_step(self, plan, data):
        """`train_step` through the fused output head: no full logits, same objective and logs."""
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        x, cached = cache.split(x)
        targets = [] if y is None else [(y, None)]
        teacher = hard_label.fused_head_teacher(plan, x, cached, self._teacher_spec, self._terms)
        mask = lm.token_mask(x, sample_weight, teacher)
        self._weightless_batches.count(mask)
        labels = y if (self.loss is not None and traced_value(self.student_loss_weight) != 0) else None
        with global_token_count(mask):
            statistics = fidelity.fused_statistics(self.fidelity_metrics, targets)
            with tf.GradientTape() as tape:
                value, student_loss, agreement, measured = hard_label.fused_head_values(
                    plan, x, teacher, labels, self.loss, sample_weight, mask, cached is not None, statistics)
                values = self._objective(targets, sample_weight, None, None, True, mask,
                                         given={plan.term.name: value, "student_loss": student_loss})
                loss = self.optimizer.scale_loss(_scaled(values["loss"]))
            variables = self.trainable_variables
            self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
            nothing = taps.ViewOutputs(None, None, {})  # no logits: no metric reads them
            return self._update_metrics(values, x, targets, nothing, nothing, sample_weight, mask,
                                        agreement, (measured, statistics[1] is not None))

    def test_step(self, data):
        x, targets, sample_weight, teacher_outputs, mask = self._batch(data, training=False)
        with global_token_count(mask):
            student_outputs = self._student_view(x, training=False)
            values = self._objective(
                targets, sample_weight, teacher_outputs, student_outputs, False, mask
            )
            return self._update_metrics(
                values, x, targets, teacher_outputs, student_outputs, sample_weight, mask
            )

    def _batch(self, data, training):
        """`(x, targets, sample_weight, teacher outputs, token mask)` of a
        batch, augmented in training; the teacher's outputs from the batch's
        cache, else from one forward."""
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        x, cached = cache.split(x)
        targets = [] if y is None else [(y, None)]  # see keras_kd.augment
        if training and self._augment is not None:
            cache.check_not_augmented(cached, self.augmentation)
            x, targets = self._augment(x, targets)
        if cached is None:
            teacher_outputs = self.teacher_view(x, training=False)
        else:
            cache.check_cached_outputs(cached, self._teacher_spec, self._terms)
            teacher_outputs = cached
        return x, targets, sample_weight, teacher_outputs, lm.token_mask(
            x, sample_weight, teacher_outputs.logits)

    def _objective(self, targets, sample_weight, teacher_outputs, student_outputs, training, mask,
                   given=None):
        """Every term of the objective, per replica, before any scaling.

        `targets` is a list of `(y, weight)` pairs (see `keras_kd.augment`):
        the hard-label loss sums the loss of each pair. `given`: values the
        fused head computed (`{term name: value, "student_loss": value or
        None}`), taken as they are.
        """
        weight = ops.cast(self.student_loss_weight, "float32")
        values = dict(given or {})
        student_loss, fused, without_labels = hard_label.student_loss(
            values.pop("student_loss", None), given is None, self._terms, self.loss,
            self._hard_label_loss_weights, _keras_compat.compile_loss(self), targets, sample_weight,
            teacher_outputs, student_outputs, training, mask, self.student_loss_weight)
        values.update(fused)
        if without_labels is not None:  # see make_train_function()
            self._traced_without_hard_labels = without_labels
        values = {"student_loss": student_loss, **values}
        weighted = []
        for term, loss_weight in zip(self._terms, self.distillation_loss_weights):
            if term.name not in values:
                values[term.name] = term.value(
                    teacher_outputs, student_outputs, training, targets, mask)
            weighted.append(ops.cast(loss_weight, "float32") * values[term.name])
        values["distillation_loss"] = total(weighted)
        values["total_loss"] = total(
            [weight * values["student_loss"], (1.0 - weight) * values["distillation_loss"]]
        )
        regularization = [ops.cast(ops.sum(value), "float32") for value in self.student.losses]
        values["loss"] = total([values["total_loss"]] + regularization)
        return values

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Keras's, on one replica's part of the first batch (see
        `keras_kd._keras_compat.one_replica_batch`, read from Keras 3.15)."""
        return super()._maybe_symbolic_build(data_batch=_keras_compat.one_replica_batch(
            iterator, data_batch, self.distribute_strategy))

    def get_metrics_result(self):
        """Keras's, leaving out compiled metrics that never saw labels (a
        Distiller trained on unlabelled data)."""
        return fidelity.built_results(self.metrics)

    def _teacher_agreement(self, teacher_outputs, student_outputs, mask):
        return fidelity.teacher_agreement(teacher_outputs.logits, student_outputs.logits, mask,
                                          self.teacher_weights, self._logits_size)

    def _update_metrics(self, values, x, targets, teacher_outputs, student_outputs, sample_weight, mask,
                        agreement=None, measured=None):
        if agreement is None:
            agreement = self._teacher_agreement(teacher_outputs, student_outputs, mask)
        values = dict(values, teacher_agreement=agreement, **terms.logged_values(self._terms))
        results = fidelity.update_step(self, values, x, targets, teacher_outputs, student_outputs,
                                       sample_weight, mask, measured)
        return _keras_compat.step_results(results, self.distribute_strategy)

    # --------------------------------------------------------------- config

    def get_config(self):
        serialize = keras.saving.serialize_keras_object
        return {
            **super().get_config(),
            "teacher": ([_serialize_model(t) for t in self.teachers]
                        if isinstance(self.teacher, (list, tuple)) else _serialize_model(self.teacher)),
            "student": _serialize_model(self.student),
            "distillation_losses": [serialize(loss) for loss in self.distillation_losses],
            "distillation_loss_weights": [as_float(w) for w in self.distillation_loss_weights],
            "student_loss_weight": as_float(self.student_loss_weight),
            "teacher_weights": self.teacher_weights if len(self.teachers) > 1 else None,
            "vocabulary_alignment": self.vocabulary_alignment,
            "fused_head": self.fused_head,
            "augmentation": keras.tree.map_structure(serialize, self.augmentation),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("teacher", "student", "distillation_losses", "augmentation"):
            if config.get(key) is not None:
                config[key] = _deserialize(config[key])
        return cls(**config)


# ---------------------------------------------------------------- helpers


def _serialize_model(model):
    """A sub-model's config without its own compile state: the Distiller's
    optimizer is the one that trains the student."""
    config = keras.saving.serialize_keras_object(model)
    config.pop("compile_config", None)
    return config


def _scaled(loss):
    """A per-replica loss divided by the replica count (no op on one)."""
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return loss if replicas == 1 else loss / replicas


def _deserialize(config):
    """An object, or a list of objects, from its serialized config."""
    if isinstance(config, list):
        return [keras.saving.deserialize_keras_object(c) for c in config]
    return keras.saving.deserialize_keras_object(config)


__all__ = ["Distiller"]
