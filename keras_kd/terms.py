"""Distillation terms: each loss as the Distiller uses it, set up and checked once.

A `Term` reads one distillation loss once (which layers it taps, whether it
reads logits, labels or a mask, which of its numbers are schedulable, its
connector) and computes its value from the two models' outputs. The
functions below set the terms up for the `Distiller`: the list of losses and
their weights, the schedulable numbers as variables, the checks that a loss
fits the models and returns a scalar, and the connectors.

Dependencies run one way: the Distiller imports this module; this module
imports the leaf modules (`losses`, `taps`, `lm`) and never the Distiller.
"""

import inspect

import keras
import tensorflow as tf
from keras import ops

from keras_kd import _validation, lm, taps
from keras_kd._validation import check_number
from keras_kd.losses.logits import LogitsDistillation, mixture_logits


class Term:
    """One distillation loss as the Distiller uses it, read once.

    Losses written for `keras.distillation` lack keras_kd's optional
    attributes; this adapter gives every loss the same fields, with the
    defaults that keep such a loss's meaning.

    Args:
        loss: a `DistillationLoss` (anything with `compute_loss`).
        name: the term's unique name (what it is logged under).
        logits_size: the number of classes logits are cut to
            (`vocabulary_alignment="truncate"`), or `None`.
        teacher_weights: the teachers' weights in the mixture, one per
            teacher (`[1.0]` for one teacher).

    Example:

    ```python
    term = Term(keras_kd.LogitsDistillation(2.0), "logits_distillation")
    teacher, student = term.pair(teacher_outputs, student_outputs, training=False)
    ```
    """

    def __init__(self, loss, name, logits_size=None, teacher_weights=(1.0,)):
        self.loss = loss
        self.name = name
        self.logits_size = logits_size
        self.teacher_weights = list(teacher_weights)
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
        self.connector = None  # set by build_connectors()
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
            return lm.cut_logits(outputs.logits, self.logits_size)
        return outputs.output

    def teacher_value(self, teacher_outputs):
        """What the term reads of the teacher(s): several teachers' logits
        are mixed at the term's temperature."""
        teacher = self.select(teacher_outputs, self.teacher_path)
        if len(self.teacher_weights) == 1 or self.teacher_path is not None:
            return teacher
        if isinstance(teacher[0], tf.TensorSpec):
            return tf.TensorSpec(teacher[0].shape, "float32")
        return mixture_logits(
            teacher, self.teacher_weights, self.temperature, self.mixes_teachers
        )

    def pair(self, teacher_outputs, student_outputs, training):
        """The `(teacher, student)` values the term compares, the student's
        after its connector."""
        teacher = self.teacher_value(teacher_outputs)
        student = self.select(student_outputs, self.student_path)
        if self.connector is not None:
            student = self.connector(student, training=training)
        return teacher, student

    def value(self, teacher_outputs, student_outputs, training, targets, mask):
        """The term's float32 value for one step.

        Args:
            teacher_outputs: the teacher view's `ViewOutputs` (or a cache's).
            student_outputs: the student view's `ViewOutputs`.
            training: whether the connector runs in training mode.
            targets: the batch's `(y, weight)` pairs (`keras_kd.augment`).
            mask: the mask of real tokens, or `None`.

        Returns:
            A float32 scalar.

        Raises:
            ValueError: if the batch is token-level and the loss takes no
                mask, or the loss does not return a scalar.
        """
        teacher, student = self.pair(teacher_outputs, student_outputs, training=training)
        self.loss.validate_outputs(teacher, student)
        extra = {}
        if self.uses_labels:
            # Labels only when every sample has exactly one (no mixing).
            extra["labels"] = (
                targets[0][0] if len(targets) == 1 and targets[0][1] is None else None
            )
        if mask is not None:
            if not self.takes_mask:
                raise ValueError(
                    f"The batch is token-level (a mask of real tokens comes "
                    f"with it), but distillation loss '{self.name}' "
                    f"({type(self.loss).__name__}) has no `mask` or `**kwargs` "
                    f"argument in compute_loss(), so padding would be "
                    f"averaged in. Add `mask=None` and average over "
                    f"mask == 1, e.g. with keras_kd.losses.base.masked_mean."
                )
            extra["mask"] = mask
        value = self.loss.compute_loss(teacher, student, **extra)
        _validation.check_scalar(value, self.loss, self.name)
        return ops.cast(value, "float32")


def make_terms(losses, names, logits_size=None, teacher_weights=(1.0,)):
    """One `Term` per loss, under the given unique names."""
    return [Term(loss, name, logits_size, teacher_weights) for loss, name in zip(losses, names)]


def schedulable_variables(student_loss_weight, terms, weights):
    """`{name: keras.Variable}` of every number a callback may change.

    Args:
        student_loss_weight: the Distiller's variable.
        terms: its `Term`s.
        weights: its distillation loss weights, one variable per term.

    Returns:
        `"student_loss_weight"`, `"<term>.weight"` for each term and
        `"<term>.<number>"` for each schedulable number of a loss.
    """
    variables = {"student_loss_weight": student_loss_weight}
    for term, weight in zip(terms, weights):
        variables[f"{term.name}.weight"] = weight
        for attribute in term.schedulable:
            variables[f"{term.name}.{attribute}"] = getattr(term.loss, attribute)
    return variables


def logged_names(terms):
    """The names of the scalars the Distiller logs each step through
    `keras_kd.metrics.TermMeans`: `total_loss`, `student_loss`,
    `distillation_loss`, each term's value when there are several, what the
    losses ask to log (`logged_values`) and `teacher_agreement`."""
    return (
        ["total_loss", "student_loss", "distillation_loss"]
        + ([term.name for term in terms] if len(terms) > 1 else [])
        + [f"{term.name}_{attribute}" for term in terms for attribute in term.logged]
        + ["teacher_agreement"]
    )


def logged_values(terms):
    """`{"<term>_<attribute>": value}` of what the losses ask to log (e.g.
    CTKD's learned temperature)."""
    return {
        f"{term.name}_{attribute}": getattr(term.loss, attribute)
        for term in terms
        for attribute in term.logged
    }


def _named_path(path):
    return None if path in (None, taps.FINAL_OUTPUT) else path


def layer_paths(terms, side):
    """`{path: argument}` of the layers the terms tap on one side.

    Args:
        terms: a list of `Term`.
        side: `"teacher"` or `"student"`.

    Returns:
        A dict from layer path to the loss argument that names it, for the
        views' error messages.
    """
    argument = f"{side}_layer_name"
    return {
        getattr(term, f"{side}_path"): argument
        for term in terms
        if getattr(term, f"{side}_path") is not None
    }


# ------------------------------------------------------------------ set-up


def as_loss_list(distillation_losses):
    """The Distiller's `distillation_losses` argument as a checked list.

    Args:
        distillation_losses: `None` (logit distillation), a loss, or a list.

    Returns:
        A non-empty list of losses.

    Raises:
        ValueError: if the list is empty or an entry has no `compute_loss`.
    """
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


def loss_weights(weights, count):
    """One weight per distillation loss: 1.0 each by default.

    Raises:
        ValueError: if a weight is not a finite number or their number
            differs from `count`.
    """
    if weights is None:
        return [1.0] * count
    return _validation.check_numbers(
        weights, "distillation_loss_weights", count, "distillation losses"
    )


def as_teacher_weights(weights, count):
    """The teachers' weights in the mixture, normalized to sum to 1.

    Raises:
        ValueError: if a weight is not a finite number >= 0, their number
            differs from `count`, or they are all zero.
    """
    if weights is None:
        return [1.0 / count] * count
    weights = _validation.check_numbers(weights, "teacher_weights", count, "teachers")
    if sum(weights) <= 0:
        raise ValueError(
            f"`teacher_weights` must not all be zero, but received {weights}."
        )
    return [w / sum(weights) for w in weights]


def unique_names(names):
    """The losses' names, made unique with `_1`, `_2`, ... suffixes."""
    unique = []
    for name in names:
        candidate, index = name, 0
        while candidate in unique:
            index += 1
            candidate = f"{name}_{index}"
        unique.append(candidate)
    return unique


def hyperparameter(value, name):
    """A schedulable number: a non-trainable float32 `keras.Variable`."""
    return keras.Variable(
        float(value), dtype="float32", trainable=False, name=name
    )


def make_schedulable(losses, term_names):
    """Turns each loss's schedulable numbers into Distiller-owned variables.

    Each attribute a loss lists in `schedulable` (e.g. `temperature`) is
    replaced on the loss by a `hyperparameter` variable, so a callback's
    `.assign()` reaches the compiled step.

    Returns:
        The list of variables created.

    Raises:
        ValueError: if a schedulable number is not finite.
    """
    variables = []
    for loss, term in zip(losses, term_names):
        for attribute in getattr(loss, "schedulable", ()):
            variable = hyperparameter(
                check_number(getattr(loss, attribute), f"{term}.{attribute}"),
                f"{term}_{attribute}",
            )
            setattr(loss, attribute, variable)
            variables.append(variable)
    return variables


def epoch_callback(terms):
    """A callback calling each loss's `set_epoch(epoch)` as an epoch of
    `fit` begins (e.g. CTKD's curriculum), or `None` when no loss has one."""
    hooks = [term.set_epoch for term in terms if term.set_epoch is not None]
    return _EpochHooks(hooks) if hooks else None


class _EpochHooks(keras.callbacks.Callback):
    """Calls each loss's `set_epoch(epoch)` as an epoch of `fit` begins."""

    def __init__(self, hooks):
        super().__init__()
        self.hooks = hooks

    def on_epoch_begin(self, epoch, logs=None):
        for hook in self.hooks:
            hook(epoch)


# ------------------------------------------------------------------ checks


def check_loss_fits_models(loss, teachers, student, logits_cut=False):
    """Keras's per-loss model check; with several teachers, for each one.

    With `vocabulary_alignment="truncate"` (`logits_cut`) the logit sizes
    may differ: logit losses are not asked to check them.

    Raises:
        ValueError: from the loss's `validate_model_compatibility`, or if a
            loss reads the final output of several teachers.
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


def build_connectors(terms, teacher_spec, student_spec):
    """Builds the losses' connectors: `{term name: layer}`.

    Each term keeps its own (`term.connector`); the Distiller assigns the
    dict to `distiller.connectors`, so they are tracked by it, trained and
    saved with it, and stay out of the student.

    Args:
        terms: a list of `Term`.
        teacher_spec: the teacher view's symbolic `ViewOutputs`, or `None`
            for a model without a known input shape.
        student_spec: the student view's, or `None`.

    Returns:
        `{term name: connector layer}` for the terms that have one.

    Raises:
        ValueError: if a term asks for a connector (`projection`) and a
            model's shapes are unknown.
    """
    built = {}
    for term in terms:
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
            term.teacher_value(teacher_spec).shape,
            term.select(student_spec, term.student_path).shape,
            name=f"{term.name}_connector",
        )
        if connector is not None:
            built[term.name] = term.connector = connector
    return built


def check_terms_are_scalars(terms, teacher_spec, student_spec):
    """Runs every loss once on symbolic outputs, so errors surface now.

    Raises:
        ValueError: if a loss fails on the models' output shapes (the
            shapes and the loss's error in the message) or does not return
            a scalar.
    """
    if teacher_spec is None or student_spec is None:
        return  # Subclassed model: checked when the step is traced.
    for term in terms:
        teacher = term.teacher_value(teacher_spec)
        student = term.select(student_spec, term.student_path)
        try:
            function = tf.function(
                lambda t, s, loss=term.loss, connector=term.connector: loss.compute_loss(
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


__all__ = [
    "Term",
    "as_loss_list",
    "as_teacher_weights",
    "build_connectors",
    "check_loss_fits_models",
    "check_terms_are_scalars",
    "epoch_callback",
    "hyperparameter",
    "layer_paths",
    "logged_names",
    "logged_values",
    "loss_weights",
    "make_schedulable",
    "make_terms",
    "schedulable_variables",
    "unique_names",
]
