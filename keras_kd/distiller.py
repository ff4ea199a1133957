"""`Distiller`: a frozen teacher supervises a student through `fit`."""

import functools
import inspect

import keras
import tensorflow as tf
from keras import ops

from keras_kd import _keras_compat, _validation, augment, cache, lm, taps
from keras_kd import metrics as fidelity
from keras_kd._validation import as_float, check_number
from keras_kd.losses.base import global_token_count, masked_mean
from keras_kd.losses.logits import LogitsDistillation, mixture_logits


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
            _validation.check_built(model, "teacher", "it would teach the random outputs of its first call", False)
        _validation.check_model(student, "student")
        _validation.check_separate_models(teachers, student)
        for model in teachers:
            _validation.check_same_inputs(model, student, _input_shapes)
        losses = _as_loss_list(distillation_losses)
        weights = (
            [1.0] * len(losses)
            if distillation_loss_weights is None
            else _validation.check_numbers(
                distillation_loss_weights, "distillation_loss_weights", len(losses),
                "distillation losses",
            )
        )
        logits_size = _check_vocabularies(teachers, student, vocabulary_alignment)
        for loss in losses:
            _check_loss_fits_models(loss, teachers, student, logits_size is not None)

        self.teacher = teacher
        for model in teachers:
            model.trainable = False
        _validation.check_trainable(student)
        self.teachers = teachers
        self.teacher_weights = _as_teacher_weights(teacher_weights, len(teachers))
        self.student = student
        self.distillation_losses = losses
        self.augmentation = augmentation
        self.vocabulary_alignment = vocabulary_alignment
        self._augment = augment.as_augmentation(augmentation)
        self.term_names = _unique_names([loss.name for loss in losses])
        self.student_loss_weight = _hyperparameter(
            check_number(student_loss_weight, "student_loss_weight", 0.0, 1.0),
            "student_loss_weight",
        )
        self.distillation_loss_weights = [
            _hyperparameter(weight, f"{term}_weight")
            for weight, term in zip(weights, self.term_names)
        ]
        self.loss_hyperparameters = _make_schedulable(losses, self.term_names)
        self._logits_size = logits_size
        self._terms = [
            _Term(loss, term, logits_size) for loss, term in zip(losses, self.term_names)
        ]

        teacher_paths = _layer_paths(self._terms, "teacher_path")
        # The view that runs the teacher(s) once and taps what the losses
        # read; `cache_teacher_outputs` runs the same view.
        self.teacher_view = (
            taps.ModelView(teacher, teacher_paths, "teacher")
            if len(teachers) == 1
            else taps.EnsembleView(teachers, teacher_paths)
        )
        self._student_view = taps.ModelView(
            student, _layer_paths(self._terms, "student_path"), "student"
        )
        teacher_spec = self._teacher_spec = self.teacher_view.output_spec()
        student_spec = self._student_view.output_spec()
        self.connectors = self._build_connectors(teacher_spec, student_spec)
        # Variables a loss learns (CTKD's temperature): tracked here, like the
        # connectors, so the optimizer trains them and the Distiller saves them.
        self.loss_layers = {t.name: t.layer for t in self._terms if t.layer is not None}
        self._logged_terms = _Means(
            ["total_loss", "student_loss", "distillation_loss"]
            + (self.term_names if len(losses) > 1 else [])
            + [f"{t.name}_{attribute}" for t in self._terms for attribute in t.logged]
            + ["teacher_agreement"]
        )
        self.fidelity_metrics = []  # keras_kd.metrics given to compile()
        self._check_terms_are_scalars(teacher_spec, student_spec)
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
        if isinstance(metrics, (list, tuple)):
            self.fidelity_metrics.extend(
                fidelity.get(m) for m in metrics if fidelity.is_fidelity_metric(m)
            )
            metrics = [m for m in metrics if not fidelity.is_fidelity_metric(m)] or None
        weighted = kwargs.get("weighted_metrics")
        misplaced = [m for m in weighted if fidelity.is_fidelity_metric(m)] if isinstance(
            weighted, (list, tuple)) else []
        if misplaced:
            raise ValueError(
                f"`weighted_metrics` received the fidelity metrics {misplaced}, which "
                f"compare the student with the teacher (over real tokens for "
                f"token-level outputs) and take no sample weights. Pass them in "
                f"`metrics=` instead: compile(metrics={misplaced})."
            )
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
        x, y, sample_weight, batch_size = self._preprocess_text(x, y, sample_weight, batch_size)
        self._check_top_k_temperatures(x)
        lm.check_data_fits_models(x, self.teachers, self.student)
        _validation.check_dense_inputs(x, self.student)
        cache.check_top_k_schedules(x, kwargs.get("callbacks"))
        _validation.check_labels(x, y, self.loss, self.student)
        epoch_hooks = [term.set_epoch for term in self._terms if term.set_epoch is not None]
        if epoch_hooks:  # e.g. CTKD's reversal curriculum, by epoch
            kwargs["callbacks"] = [_EpochHooks(epoch_hooks), *(kwargs.get("callbacks") or [])]
        kwargs["callbacks"] = self._weightless_batches.added_to(kwargs.get("callbacks"))
        if validation_data is not None and self._text_preprocessor(validation_data):
            validation_data = lm.preprocessed(
                self.student.preprocessor,
                *keras.utils.unpack_x_y_sample_weight(validation_data),
                batch_size=batch_size,
            )
        lm.check_data_fits_models(validation_data, self.teachers, self.student)
        _validation.check_validation_labels(x, y, validation_data)
        return super().fit(x, y, batch_size=batch_size, sample_weight=sample_weight,
                           validation_data=validation_data, **kwargs)

    def evaluate(self, x=None, y=None, batch_size=None, sample_weight=None, **kwargs):
        """`keras.Model.evaluate`; raw text goes through the student's preprocessor."""
        x, y, sample_weight, batch_size = self._preprocess_text(x, y, sample_weight, batch_size)
        self._check_top_k_temperatures(x)
        lm.check_data_fits_models(x, self.teachers, self.student)
        _validation.check_dense_inputs(x, self.student)
        return super().evaluate(x, y, batch_size=batch_size, sample_weight=sample_weight, **kwargs)

    def _check_top_k_temperatures(self, data):
        """Refuses a top-K cache before the first step when a logit term's
        temperature is not 1 (a schedule that leaves 1 later is caught as the
        step runs)."""
        if not cache.holds_top_k(data):
            return
        for term in self._terms:
            if (isinstance(term.loss, LogitsDistillation) and term.teacher_path is None
                    and as_float(term.temperature) != 1.0):
                raise ValueError(
                    f"The data is a top-K teacher cache, which holds log-probabilities "
                    f"at temperature 1, but the term '{term.name}' has temperature "
                    f"{as_float(term.temperature)}. Set the LogitsDistillation "
                    f"temperature to 1.0, or cache full logits (top_k=None)."
                )

    def _text_preprocessor(self, data):
        if not lm.holds_text(data):
            return None
        preprocessor = getattr(self.student, "preprocessor", None)
        if preprocessor is not None:
            return preprocessor
        inputs = getattr(self.student, "inputs", None)  # None: subclassed, cannot tell
        if inputs and not any(str(i.dtype) == "string" for i in keras.tree.flatten(inputs)):
            raise ValueError(
                f"The data holds strings, but the student '{self.student.name}' takes "
                f"{[str(i.dtype) for i in keras.tree.flatten(inputs)]} inputs and has no "
                f"KerasHub preprocessor to turn text into token ids. Build the student "
                f"with its preprocessor (e.g. GPT2CausalLM(backbone, preprocessor=...)), "
                f"or pass token ids."
            )
        return None

    def _preprocess_text(self, x, y, sample_weight, batch_size):
        preprocessor = self._text_preprocessor(x)
        if preprocessor is None:
            return x, y, sample_weight, batch_size
        return lm.preprocessed(preprocessor, x, y, sample_weight, batch_size), None, None, None

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
                for v in self._pair(term, teacher_outputs, student_outputs, training=False)
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
        self._weightless_batches.count(mask)
        with global_token_count(mask):  # one all-reduce of the token count per step
            with tf.GradientTape() as tape:
                student_outputs = self._student_view(x, training=True)
                terms = self._objective(
                    targets, sample_weight, teacher_outputs, student_outputs, True, mask
                )
                # apply_gradients sums over replicas: each replica contributes
                # its share of the global mean.
                loss = _scaled(terms["loss"])
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
                terms, x, targets, teacher_outputs, student_outputs, sample_weight, mask, agreement
            )

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        x, cached = cache.split(x)
        teacher_outputs = self._teacher_outputs(x, cached)
        mask = lm.token_mask(x, sample_weight, teacher_outputs.logits)
        with global_token_count(mask):
            student_outputs = self._student_view(x, training=False)
            terms = self._objective(
                _targets(y), sample_weight, teacher_outputs, student_outputs, False, mask
            )
            return self._update_metrics(
                terms, x, _targets(y), teacher_outputs, student_outputs, sample_weight, mask
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

        def hard_label_loss():
            hard = []
            for y, target_weight in targets:
                value = compiled_loss(
                    y, student_outputs.output, _combine(sample_weight, target_weight)
                )
                # keras.losses.Loss divides by the replica count; undo it so
                # that every term is a plain per-replica mean.
                hard.append(_unscaled(ops.cast(value, "float32")))
            return _total(hard)

        fused = None
        if _traced_value(self.student_loss_weight) != 0:
            fused = self._fused_term(targets, teacher_outputs, student_outputs, training, mask)
        precomputed = {}
        if fused is not None:
            # One gradient pass for the hard labels and the forward KL.
            term, y = fused, targets[0][0]
            teacher, student = self._pair(term, teacher_outputs, student_outputs, training)
            term.loss.validate_outputs(teacher, student)
            value, cross_entropy = term.loss.compute_loss_and_cross_entropy(
                teacher, student, y, mask)
            precomputed[term.name] = ops.cast(value, "float32")
            hard_label = _PerPositionLoss(self.loss)
            student_loss = _unscaled(ops.cast(
                hard_label(y, cross_entropy, _combine(sample_weight, None)), "float32"))
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
            student_loss = hard_label_loss()
        terms = {"student_loss": student_loss}
        weighted = []
        for term, loss_weight in zip(self._terms, self.distillation_loss_weights):
            terms[term.name] = precomputed[term.name] if term.name in precomputed else (
                self._term_value(term, teacher_outputs, student_outputs, training, targets, mask)
            )
            weighted.append(ops.cast(loss_weight, "float32") * terms[term.name])
        terms["distillation_loss"] = _total(weighted)
        terms["total_loss"] = _total(
            [weight * terms["student_loss"], (1.0 - weight) * terms["distillation_loss"]]
        )
        regularization = [
            ops.cast(ops.sum(value), "float32") for value in self.student.losses
        ]
        terms["loss"] = _total([terms["total_loss"]] + regularization)
        return terms

    def _fused_term(self, targets, teacher_outputs, student_outputs, training, mask):
        """The term whose gradient pass can also compute the hard-label loss
        (`LogitsDistillation.compute_loss_and_cross_entropy`), or `None`.

        Only in training, for token-level logits that are the student's
        output, one label per position, the hard-label loss
        `keras.losses.SparseCategoricalCrossentropy(from_logits=True)`
        (without `ignore_class` or loss weights) and a forward-KL term on
        those logits: there, the value is the same and the step spares two
        `(batch, sequence, vocabulary)` buffers.
        """
        student = student_outputs.output
        if not (training and mask is not None and len(targets) == 1 and targets[0][1] is None
                and not isinstance(teacher_outputs.logits, lm.TopK)
                and student is student_outputs.logits and len(student.shape) == 3
                and _keras_compat.keras_mask(student) is None
                and _is_plain_token_cross_entropy(self.loss)
                and self._hard_label_loss_weights is None):
            return None
        for term in self._terms:
            if (isinstance(term.loss, LogitsDistillation) and term.loss.fuses_cross_entropy
                    and term.teacher_path is None and term.student_path is None
                    and term.expects_logits and term.logits_size is None
                    and term.name not in self.connectors):
                return term
        return None

    def _teacher_outputs(self, x, cached):
        """The teacher's outputs: from the batch's cache, else one forward."""
        if cached is None:
            return self.teacher_view(x, training=False)
        needed = set(_layer_paths(self._terms, "teacher_path"))
        reads_output = [t.name for t in self._terms if t.teacher_path is None and not t.expects_logits]
        if cached.output is None and reads_output:
            raise ValueError(
                f"The cached teacher outputs are a top-K summary of its "
                f"logits, without its final output, but {reads_output} read "
                f"the final output. Cache without top_k for these losses."
            )
        if not needed <= set(cached.taps):
            raise ValueError(
                f"The cached teacher outputs hold the layers "
                f"{sorted(cached.taps)}, but this Distiller's losses read "
                f"{sorted(needed)}. Build the cache from the Distiller, "
                f"cache_teacher_outputs(distiller, ...), so that every tapped "
                f"layer is included."
            )
        self._check_cache_sizes(cached)
        return cached

    def _check_cache_sizes(self, cached):
        """Refuses cached outputs whose last axis differs from the teacher's.

        A cache built with another teacher or tokenizer would otherwise fail
        deep in a loss with a shape error, or broadcast.
        """
        if self._teacher_spec is None:  # a subclassed teacher never called
            return
        pairs = [(field, getattr(self._teacher_spec, field), getattr(cached, field))
                 for field in ("output", "logits")]
        pairs += [(f"layer '{path}'", self._teacher_spec.taps.get(path), value)
                  for path, value in cached.taps.items()]
        for where, expected, received in pairs:
            if expected is None or received is None or isinstance(received, lm.TopK):
                continue
            for want, got in zip(keras.tree.flatten(expected), keras.tree.flatten(received)):
                if want.shape[-1] is not None and got.shape[-1] is not None and want.shape[-1] != got.shape[-1]:
                    raise ValueError(
                        f"The cached teacher {where} has {got.shape[-1]} values on its "
                        f"last axis (shape {tuple(got.shape)}), but this Distiller's "
                        f"teacher gives {want.shape[-1]} (shape {tuple(want.shape)}): the "
                        f"cache was built with another teacher or tokenizer. Build it "
                        f"with cache_teacher_outputs(distiller, ...) from this Distiller."
                    )

    def _pair(self, term, teacher_outputs, student_outputs, training):
        """The (teacher, student) values a term compares, after the connector."""
        teacher = self._teacher_value(term, teacher_outputs)
        student = term.select(student_outputs, term.student_path)
        if term.name in self.connectors:
            student = self.connectors[term.name](student, training=training)
        return teacher, student

    def _term_value(self, term, teacher_outputs, student_outputs, training, targets, mask):
        teacher, student = self._pair(term, teacher_outputs, student_outputs, training=training)
        term.loss.validate_outputs(teacher, student)
        extra = {}
        if term.uses_labels:
            # Labels only when every sample has exactly one (no mixing).
            extra["labels"] = (
                targets[0][0] if len(targets) == 1 and targets[0][1] is None else None
            )
        if mask is not None:
            if not term.takes_mask:
                raise ValueError(
                    f"The batch is token-level (a mask of real tokens comes "
                    f"with it), but distillation loss '{term.name}' "
                    f"({type(term.loss).__name__}) has no `mask` or `**kwargs` "
                    f"argument in compute_loss(), so padding would be "
                    f"averaged in. Add `mask=None` and average over "
                    f"mask == 1, e.g. with keras_kd.losses.base.masked_mean."
                )
            extra["mask"] = mask
        value = term.loss.compute_loss(teacher, student, **extra)
        _validation.check_scalar(value, term.loss, term.name)
        return ops.cast(value, "float32")

    def _teacher_value(self, term, teacher_outputs):
        """What a term reads of the teacher(s): several teachers' logits are
        mixed at the term's temperature."""
        teacher = term.select(teacher_outputs, term.teacher_path)
        if len(self.teachers) == 1 or term.teacher_path is not None:
            return teacher
        if isinstance(teacher[0], tf.TensorSpec):
            return tf.TensorSpec(teacher[0].shape, "float32")
        return mixture_logits(
            teacher, self.teacher_weights, term.temperature, term.mixes_teachers
        )

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras (3.15) takes a first batch to build the compiled metrics and
        # reduces it across replicas with strategy.reduce("MEAN"), which
        # raises under MultiWorkerMirroredStrategy ("Attempt to convert a
        # value (PerReplica...)"), for any model. Only shapes matter here:
        # one replica's part of the batch has them.
        if iterator is not None and data_batch is None:
            for _, _, batches in iterator:
                data_batch = keras.tree.map_structure(
                    lambda value: _one_replica(value, self.distribute_strategy),
                    next(batches),
                )
                break
        return super()._maybe_symbolic_build(data_batch=data_batch)

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
        """Fraction of samples (real tokens) whose top-1 class is the
        teacher's (first output of models with several)."""
        student = keras.tree.flatten(_cut(student_outputs.logits, self._logits_size))[0]
        if isinstance(teacher_outputs.logits, lm.TopK):  # a top-K cache: ids[..., 0] is top-1
            same = teacher_outputs.logits.ids[..., 0] == tf.argmax(student, axis=-1, output_type="int32")
            return masked_mean(ops.cast(same, "float32"), mask)
        teacher = keras.tree.flatten(_cut(teacher_outputs.logits, self._logits_size))
        teacher = (
            mixture_logits(teacher, self.teacher_weights, 1.0)
            if len(self.teachers) > 1
            else teacher[0]
        )
        # tf.argmax: keras.ops.argmax adds a dozen ops of signed-zero handling.
        same = tf.argmax(teacher, axis=-1) == tf.argmax(student, axis=-1)
        return masked_mean(ops.cast(same, "float32"), mask)

    def _update_fidelity(self, targets, teacher_outputs, student_outputs, mask):
        """Updates the fidelity metrics from the step's logits (first output
        of models with several); returns the names of those that need labels
        this batch does not have."""
        metrics = self.fidelity_metrics
        if not metrics:
            return []
        labels = targets[0][0] if len(targets) == 1 and targets[0][1] is None else None
        if labels is not None:
            labels = keras.tree.flatten(labels)[0]  # the first output's, as the logits
        student = keras.tree.flatten(_cut(student_outputs.logits, self._logits_size))[0]
        top = teacher_outputs.logits if isinstance(teacher_outputs.logits, lm.TopK) else None
        teacher = None
        if top is None:
            teacher = keras.tree.flatten(_cut(teacher_outputs.logits, self._logits_size))
            teacher = (
                mixture_logits(teacher, self.teacher_weights, 1.0)
                if len(self.teachers) > 1
                else teacher[0]
            )
        student = ops.stop_gradient(student)
        skipped = []
        for metric in metrics:
            if getattr(metric, "needs_labels", False) and labels is None:
                skipped.append(metric.name)
            elif isinstance(metric, fidelity.TeacherKL):
                if top is None:
                    metric.update_state(teacher, student, mask)
                else:
                    metric.add_values(lm.top_k_kl(top, student), mask)
            elif metric.model == "student":
                metric.update_state(labels, student, mask)
            elif top is None:
                metric.update_state(labels, teacher, mask)
            else:  # a top-K cache holds the teacher's top-1 log-probability and id
                correct = top.ids[..., 0] == fidelity.class_ids(
                    labels, ops.shape(top.ids)[:-1], student.shape[-1]
                )
                metric.add_predictions(ops.exp(ops.cast(top.log_probs[..., 0], "float32")),
                                       correct, mask)
        return skipped

    def _update_metrics(
        self, terms, x, targets, teacher_outputs, student_outputs, sample_weight, mask, agreement=None
    ):
        batch_size = ops.cast(ops.shape(keras.tree.flatten(x)[0])[0], "float32")
        if agreement is None:
            agreement = self._teacher_agreement(teacher_outputs, student_outputs, mask)
        terms = dict(terms, teacher_agreement=agreement)
        for term in self._terms:
            for attribute in term.logged:
                terms[f"{term.name}_{attribute}"] = getattr(term.loss, attribute)
        _keras_compat.loss_tracker(self).update_state(terms["loss"], sample_weight=batch_size)
        self._logged_terms.update_state(terms, batch_size)
        compiled_metrics = _keras_compat.compile_metrics(self)
        if compiled_metrics is not None:
            for y, target_weight in targets:
                compiled_metrics.update_state(
                    y, student_outputs.output, _combine(sample_weight, target_weight)
                )
        unlabelled = self._update_fidelity(targets, teacher_outputs, student_outputs, mask)
        results = self.get_metrics_result()
        for name in unlabelled:  # ECE without labels is unknown, not 0
            results.pop(name, None)
        if _keras_compat.in_multi_worker_mode(self.distribute_strategy):
            # Keras (3.15) reduces step results across workers with
            # strategy.reduce("MEAN", value, axis=0), which fails on
            # scalars; a 1-element vector reduces to the same mean.
            results = {k: ops.reshape(v, (1,)) for k, v in results.items()}
        return results

    # ----------------------------------------------------------- validation

    def _build_connectors(self, teacher_spec, student_spec):
        """Builds the losses' connectors: `{term name: layer}`.

        Assigned to `self.connectors`, they are tracked by the Distiller, so
        they are trained and saved with it and stay out of the student.
        """
        built = {}
        for term in self._terms:
            if term.make_connector is None:
                continue
            if teacher_spec is None or student_spec is None:
                if term.projection is not None:
                    raise ValueError(
                        f"'{term.name}' asks for a connector (projection="
                        f"{term.projection!r}), which needs the feature "
                        f"shapes, but a model has no known input shape (a "
                        f"subclassed model never called). Call teacher and "
                        f"student on a batch once before building the "
                        f"Distiller."
                    )
                continue
            connector = term.make_connector(
                self._teacher_value(term, teacher_spec).shape,
                term.select(student_spec, term.student_path).shape,
                name=f"{term.name}_connector",
            )
            if connector is not None:
                built[term.name] = connector
        return built

    def _check_terms_are_scalars(self, teacher_spec, student_spec):
        """Runs every loss once on symbolic outputs, so errors surface now."""
        if teacher_spec is None or student_spec is None:
            return  # Subclassed model: checked when the step is traced.
        for term in self._terms:
            connector = self.connectors.get(term.name)
            teacher = self._teacher_value(term, teacher_spec)
            student = term.select(student_spec, term.student_path)
            try:
                function = tf.function(
                    lambda t, s, loss=term.loss, connector=connector: loss.compute_loss(
                        t, s if connector is None else connector(s)
                    ),
                    autograph=False,
                )
                value = function.get_concrete_function(
                    teacher, student
                ).structured_outputs
            except Exception as error:  # noqa: BLE001 - re-raised with context
                raise ValueError(
                    f"Distillation loss '{term.name}' ({type(term.loss).__name__}) "
                    f"failed on the teacher output "
                    f"{keras.tree.map_structure(lambda s: s.shape, teacher)} "
                    f"and student output "
                    f"{keras.tree.map_structure(lambda s: s.shape, student)}: "
                    f"{error}"
                ) from error
            _validation.check_scalar(value, term.loss, term.name)

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


class _Term:
    """One distillation loss as the Distiller uses it, read once.

    Losses written for `keras.distillation` lack keras_kd's optional
    attributes; this adapter gives every loss the same fields, with the
    defaults that keep such a loss's meaning.
    """

    def __init__(self, loss, name, logits_size=None):
        self.loss = loss
        self.name = name
        self.logits_size = logits_size
        self.teacher_path = _named_path(getattr(loss, "teacher_layer_name", None))
        self.student_path = _named_path(getattr(loss, "student_layer_name", None))
        self.expects_logits = bool(getattr(loss, "expects_logits", False))
        self.uses_labels = bool(getattr(loss, "uses_labels", False))
        self.schedulable = tuple(getattr(loss, "schedulable", ()))
        self.mixes_teachers = getattr(loss, "mixes_teachers", "distributions")
        self.make_connector = getattr(loss, "make_connector", None)
        layer = getattr(loss, "layer", None)
        self.layer = layer if isinstance(layer, keras.layers.Layer) else None
        self.logged = tuple(getattr(loss, "logged", ()))
        self.set_epoch = getattr(loss, "set_epoch", None)
        self.projection = getattr(loss, "projection", None)
        parameters = inspect.signature(loss.compute_loss).parameters.values()
        self.takes_mask = any(
            p.name == "mask" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters
        )

    @property
    def temperature(self):
        """The loss's temperature (its variable once schedulable), else 1."""
        return getattr(self.loss, "temperature", 1.0)

    def select(self, outputs, path):
        """The value this term reads of a view's outputs: a tapped layer,
        the logits or the final output."""
        if path is not None:
            return outputs.taps[path]
        if self.expects_logits:
            return _cut(outputs.logits, self.logits_size)
        return outputs.output


def _cut(logits, size):
    """Logits cut to the first `size` classes (vocabulary_alignment)."""
    if size is None:
        return logits
    if isinstance(logits, lm.TopK):
        raise ValueError(
            "vocabulary_alignment='truncate' cannot cut a top-K teacher cache "
            "(its token ids may lie beyond the cut). Cache full logits."
        )

    def cut(value):
        if isinstance(value, tf.TensorSpec):
            return tf.TensorSpec(value.shape[:-1] + [size], value.dtype)
        return value[..., :size]

    return keras.tree.map_structure(cut, logits)


def _named_path(path):
    return None if path in (None, taps.FINAL_OUTPUT) else path


def _layer_paths(terms, attribute):
    """`{path: argument}` of the layers the terms tap on one side."""
    argument = "teacher_layer_name" if attribute == "teacher_path" else "student_layer_name"
    return {
        getattr(term, attribute): argument
        for term in terms
        if getattr(term, attribute) is not None
    }


def _serialize_model(model):
    """A sub-model's config without its own compile state: the Distiller's
    optimizer is the one that trains the student."""
    config = keras.saving.serialize_keras_object(model)
    config.pop("compile_config", None)
    return config


def _total(values):
    """The sum of a list of scalars (0 for none), without extra ops."""
    return functools.reduce(ops.add, values) if values else ops.zeros((), "float32")


def _is_plain_token_cross_entropy(loss):
    """Whether a compiled `loss` is `SparseCategoricalCrossentropy(from_logits=True)`
    without `ignore_class` (the one `_PerPositionLoss` can stand in for)."""
    if not isinstance(loss, keras.losses.SparseCategoricalCrossentropy):
        return False
    config = loss.get_config()
    return config.get("from_logits") is True and config.get("ignore_class") is None


class _PerPositionLoss(keras.losses.Loss):
    """A compiled loss's reduction applied to values computed elsewhere.

    `_PerPositionLoss(loss)(y, values, sample_weight)` equals
    `loss(y, y_pred, sample_weight)` when `values` are `loss`'s per-position
    values of `y_pred`: the same reduction, dtype and replica scaling.
    """

    def __init__(self, loss):
        super().__init__(name=loss.name, reduction=loss.reduction, dtype=loss.dtype)

    def call(self, y_true, y_pred):
        return y_pred


def _scaled(loss):
    """A per-replica loss divided by the replica count (no op on one)."""
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return loss if replicas == 1 else loss / replicas


def _unscaled(loss):
    """The inverse of `_scaled` (keras.losses.Loss values come scaled)."""
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return loss if replicas == 1 else loss * replicas


class _EpochHooks(keras.callbacks.Callback):
    """Calls each loss's `set_epoch(epoch)` as an epoch of `fit` begins."""

    def __init__(self, hooks):
        super().__init__()
        self.hooks = hooks

    def on_epoch_begin(self, epoch, logs=None):
        for hook in self.hooks:
            hook(epoch)


class _Means(keras.metrics.Metric):
    """Batch-size-weighted running means of several scalars, in one state.

    One update per step instead of one `Mean` per logged term: on small
    models the per-op cost of many trackers is a visible part of a step.
    `result()` is a dict, which Keras spreads into the logs.
    """

    def __init__(self, names):
        super().__init__(name="distillation_terms")
        self.names = list(names)
        self.total = self.add_variable(shape=(len(self.names),), initializer="zeros", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, values, batch_size):
        stacked = ops.stack([ops.cast(values[name], "float32") for name in self.names])
        self.total.assign_add(stacked * batch_size)
        self.count.assign_add(batch_size)

    def result(self):
        means = ops.divide_no_nan(self.total, self.count)
        return {name: means[i] for i, name in enumerate(self.names)}

    def reset_state(self):
        self.total.assign(ops.zeros_like(self.total))
        self.count.assign(0.0)


def _one_replica(value, strategy):
    if isinstance(value, tf.distribute.DistributedValues):
        return strategy.experimental_local_results(value)[0]
    return value


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


def _hyperparameter(value, name):
    return keras.Variable(
        float(value), dtype="float32", trainable=False, name=name
    )


def _make_schedulable(losses, term_names):
    """Turns each loss's schedulable numbers into Distiller-owned variables."""
    variables = []
    for loss, term in zip(losses, term_names):
        for attribute in getattr(loss, "schedulable", ()):
            variable = _hyperparameter(
                check_number(getattr(loss, attribute), f"{term}.{attribute}"),
                f"{term}_{attribute}",
            )
            setattr(loss, attribute, variable)
            variables.append(variable)
    return variables


def _input_shapes(model):
    """Shapes (without the batch axis) of a model's inputs, else `None`."""
    signature = taps.input_signature(model)
    if signature is None:
        return None
    return [tuple(spec.shape[1:]) for spec in keras.tree.flatten(signature)]


def _check_loss_fits_models(loss, teachers, student, logits_cut=False):
    """Keras's per-loss model check; with several teachers, for each one.

    With `vocabulary_alignment="truncate"` the logit sizes may differ: logit
    losses are not asked to check them.
    """
    path = getattr(loss, "teacher_layer_name", None)
    if logits_cut and getattr(loss, "expects_logits", False) and path in (None, taps.FINAL_OUTPUT):
        return
    if len(teachers) == 1:
        loss.validate_model_compatibility(teachers[0], student)
    elif path in (None, taps.FINAL_OUTPUT):
        if not getattr(loss, "expects_logits", False):
            raise ValueError(
                f"{type(loss).__name__} reads the teacher's final output, "
                f"but there are {len(teachers)} teachers. Name the one to "
                f"tap: teacher_layer_name='<teacher>/<layer>' with a teacher "
                f"of {[t.name for t in teachers]}."
            )
        for teacher in teachers:
            loss.validate_model_compatibility(teacher, student)
    # Named teacher layers are resolved, with clear errors, by the views.


def _check_vocabularies(teachers, student, alignment):
    """Refuses models that tokenize differently; returns the logit size to
    cut to (`vocabulary_alignment="truncate"`), else `None`."""
    if alignment not in (None, "truncate"):
        raise ValueError(
            f"`vocabulary_alignment` must be None or 'truncate', but received "
            f"{alignment!r}. Pass 'truncate' for vocabularies that differ only "
            f"by padding rows at the end."
        )
    student_vocabulary = lm.vocabulary(student)
    for teacher in teachers:
        teacher_vocabulary = lm.vocabulary(teacher)
        if None not in (teacher_vocabulary, student_vocabulary) and (
            teacher_vocabulary != student_vocabulary
        ):
            differ = next(
                (i for i, (a, b) in enumerate(zip(teacher_vocabulary, student_vocabulary)) if a != b),
                min(len(teacher_vocabulary), len(student_vocabulary)),
            )
            raise ValueError(
                f"The teacher '{teacher.name}' and the student '{student.name}' "
                f"tokenize differently: their vocabularies ({len(teacher_vocabulary)} "
                f"and {len(student_vocabulary)} tokens) first differ at token id "
                f"{differ}, so the same id would mean different tokens to the two "
                f"models. Distil between models that share one tokenizer."
            )
    if alignment is None:
        return None
    sizes = [
        spec.shape[-1]
        for model in teachers + [student]
        for spec in [keras.tree.flatten(taps.symbolic_outputs(model) or [None])[0]]
        if spec is not None
    ]
    if len(sizes) != len(teachers) + 1:
        raise ValueError(
            "vocabulary_alignment='truncate' needs the logit sizes of every "
            "model, but a model has no known output shape (a subclassed model "
            "never called). Call the models on a batch once first."
        )
    size = min(sizes)
    for vocabulary in (student_vocabulary, *(lm.vocabulary(t) for t in teachers)):
        if vocabulary is not None and len(vocabulary) > size:
            raise ValueError(
                f"vocabulary_alignment='truncate' cuts the logits to {size} "
                f"classes, but the tokenizer has {len(vocabulary)} tokens: real "
                f"tokens would be cut, not padding rows. Distil between models "
                f"whose logits cover the whole vocabulary."
            )
    return size


def _as_teacher_weights(weights, count):
    if weights is None:
        return [1.0 / count] * count
    weights = _validation.check_numbers(weights, "teacher_weights", count, "teachers")
    if sum(weights) <= 0:
        raise ValueError(
            f"`teacher_weights` must not all be zero, but received {weights}."
        )
    return [w / sum(weights) for w in weights]


def _as_loss_list(distillation_losses):
    if distillation_losses is None:
        return [LogitsDistillation()]
    losses = (
        list(distillation_losses)
        if isinstance(distillation_losses, (list, tuple))
        else [distillation_losses]
    )
    if not losses:
        raise ValueError(
            "`distillation_losses` is an empty list. Pass at least one "
            "loss, e.g. keras_kd.LogitsDistillation(), or leave it out for "
            "the default logit distillation."
        )
    for loss in losses:
        if not callable(getattr(loss, "compute_loss", None)):
            raise ValueError(
                f"Each distillation loss must have a compute_loss() method "
                f"(a keras_kd.DistillationLoss), but received "
                f"{type(loss).__name__}: {loss!r}. Use e.g. "
                f"keras_kd.LogitsDistillation()."
            )
    return losses


def _unique_names(names):
    unique = []
    for name in names:
        candidate, index = name, 0
        while candidate in unique:
            index += 1
            candidate = f"{name}_{index}"
        unique.append(candidate)
    return unique
