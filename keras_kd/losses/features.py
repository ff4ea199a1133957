"""Feature distillation: losses between intermediate features and relations.

`FeatureDistillation` names a teacher layer and a student layer; the
Distiller taps both in the models' single forward pass, maps the student
feature through a learnable connector when asked (`projection`), and applies
the loss. The loss is a Keras loss (`"mse"` by default: FitNets' hint) or one
of the feature and relation losses below.

Each loss says what it needs to line up (`alignment`):

- `"elementwise"`: identical shapes (a connector maps channels and size);
- `"spatial"`: identical spatial sizes, any channel counts (`AttentionTransfer`);
- `"batch"`: nothing — it compares how samples of the batch relate to each
  other (`SimilarityPreserving`, `RKDDistance`, `RKDAngle`, `PKT`). These are
  computed within each replica's batch under `tf.distribute`; the logged and
  optimized value is the mean over replicas of the per-replica values.
"""

import importlib

import keras
from keras import ops

from keras_kd import _validation, connectors
from keras_kd.losses.base import (
    DistillationLoss,
    deserialize_loss,
    keras_loss_function,
    map_losses,
    masked_mean,
    serialize_loss,
    sum_over_outputs,
)
from keras_kd.taps import FINAL_OUTPUT, resolve_layer

_EPSILON = 1e-12


def _flat(features):
    """(batch, ...) float32 features flattened to (batch, d)."""
    features = ops.cast(features, "float32")
    return ops.reshape(features, (ops.shape(features)[0], -1))


def _l2_normalize(x, axis=-1):
    norm = ops.sqrt(ops.sum(ops.square(x), axis=axis, keepdims=True))
    return x / ops.maximum(norm, _EPSILON)


def _smooth_l1(a, b):
    """Huber loss with delta 1 (PyTorch's smooth_l1), averaged."""
    diff = ops.abs(a - b)
    return ops.mean(ops.where(diff < 1.0, 0.5 * ops.square(diff), diff - 0.5))


@keras.saving.register_keras_serializable(package="keras_kd")
class FeatureLoss:
    """Base class of a loss between two feature tensors.

    Subclasses implement `__call__(teacher_features, student_features)`
    returning a scalar, and set `alignment` (see the module docstring).
    Losses that compare features position by position also implement
    `per_position(teacher_features, student_features)`, unreduced over the
    leading axes; only those can be masked for token-level features.
    """

    alignment = "elementwise"
    per_position = None

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@keras.saving.register_keras_serializable(package="keras_kd")
class Hint(FeatureLoss):
    """FitNets' hint loss: mean squared error between features.

    With `projection="auto"`, the student feature first goes through a
    learnable connector (FitNets' regressor). Same value as `loss="mse"`.

    Example:

    ```python
    keras_kd.FeatureDistillation(loss=keras_kd.losses.Hint(),
                                 teacher_layer_name="block3",
                                 student_layer_name="block2",
                                 projection="auto")
    ```

    Reference:
        Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015,
        arXiv:1412.6550.
    """

    def __call__(self, teacher_features, student_features):
        return ops.mean(self.per_position(teacher_features, student_features))

    def per_position(self, teacher_features, student_features):
        """Mean squared error over the last axis, one value per position."""
        difference = ops.cast(teacher_features, "float32") - ops.cast(
            student_features, "float32"
        )
        return ops.mean(ops.square(difference), axis=-1)


@keras.saving.register_keras_serializable(package="keras_kd")
class CosineDistance(FeatureLoss):
    """One minus the cosine similarity of each sample's flattened features.

    Scale-invariant: matches directions of the feature vectors, not norms.

    Example:

    ```python
    keras_kd.FeatureDistillation(loss=keras_kd.losses.CosineDistance(), ...)
    ```

    Reference:
        Used as a feature loss e.g. in Heo et al., "A Comprehensive Overhaul
        of Feature Distillation", ICCV 2019, arXiv:1904.01866 (discussion of
        distance functions).
    """

    def __call__(self, teacher_features, student_features):
        teacher = _l2_normalize(_flat(teacher_features))
        student = _l2_normalize(_flat(student_features))
        return ops.mean(1.0 - ops.sum(teacher * student, axis=-1))


@keras.saving.register_keras_serializable(package="keras_kd")
class AttentionTransfer(FeatureLoss):
    """Matches spatial attention maps: where the feature maps are active.

    The attention map of a feature map `A` (channels last) is
    `mean_c(A_c^p)` flattened over positions and L2-normalized per sample;
    the loss is the mean squared difference of the two maps. Channel counts
    may differ; spatial sizes must match (or use `projection="auto"`, which
    then only resizes). The paper weighs this term by beta = 1000 / 2 per
    pair with the mean taken over positions; set `distillation_loss_weights`
    accordingly (e.g. 100-1000).

    Args:
        p: the exponent of the activations (2 in the paper).

    Example:

    ```python
    keras_kd.FeatureDistillation(loss=keras_kd.losses.AttentionTransfer(),
                                 teacher_layer_name="stage4",
                                 student_layer_name="stage3")
    ```

    Reference:
        Zagoruyko & Komodakis, "Paying More Attention to Attention: Improving
        the Performance of Convolutional Neural Networks via Attention
        Transfer", ICLR 2017, arXiv:1612.03928.
    """

    alignment = "spatial"

    def __init__(self, p=2):
        self.p = p

    def _attention(self, features):
        features = ops.cast(features, "float32")
        attention = ops.mean(ops.power(ops.abs(features), self.p), axis=-1)
        return _l2_normalize(_flat(attention))

    def __call__(self, teacher_features, student_features):
        return ops.mean(
            ops.square(
                self._attention(teacher_features)
                - self._attention(student_features)
            )
        )

    def get_config(self):
        return {"p": self.p}


@keras.saving.register_keras_serializable(package="keras_kd")
class SimilarityPreserving(FeatureLoss):
    """Matches the batch's pairwise similarity matrices.

    `G = normalize_rows(F F^T)` for the `(batch, d)` flattened features `F`;
    the loss is `||G_t - G_s||_F^2 / batch^2`. Any shapes.

    Example:

    ```python
    keras_kd.FeatureDistillation(loss=keras_kd.losses.SimilarityPreserving(),
                                 teacher_layer_name="pool",
                                 student_layer_name="flatten")
    ```

    Reference:
        Tung & Mori, "Similarity-Preserving Knowledge Distillation",
        ICCV 2019, arXiv:1907.09682.
    """

    alignment = "batch"

    @staticmethod
    def _similarity(features):
        features = _flat(features)
        return _l2_normalize(ops.matmul(features, ops.transpose(features)))

    def __call__(self, teacher_features, student_features):
        difference = self._similarity(teacher_features) - self._similarity(
            student_features
        )
        batch = ops.cast(ops.shape(difference)[0], "float32")
        return ops.sum(ops.square(difference)) / (batch * batch)


def _pairwise_distances(embeddings):
    """Euclidean distances of the rows, zero on the diagonal."""
    squared = ops.sum(ops.square(embeddings), axis=1)
    products = ops.matmul(embeddings, ops.transpose(embeddings))
    distances = squared[:, None] + squared[None, :] - 2.0 * products
    distances = ops.sqrt(ops.maximum(distances, _EPSILON))
    off_diagonal = 1.0 - ops.eye(ops.shape(embeddings)[0], dtype="float32")
    return distances * off_diagonal, off_diagonal


@keras.saving.register_keras_serializable(package="keras_kd")
class RKDDistance(FeatureLoss):
    """Relational KD, distance-wise: matches normalized pairwise distances.

    Distances between the samples' flattened features, each matrix divided
    by its mean off-diagonal distance; the loss is the smooth-L1 (Huber,
    delta 1) difference averaged over all `batch^2` pairs, as in the authors'
    code. Any shapes.

    Example:

    ```python
    keras_kd.FeatureDistillation(loss=keras_kd.losses.RKDDistance(),
                                 teacher_layer_name="pool",
                                 student_layer_name="pool")
    ```

    Reference:
        Park, Kim, Lu & Cho, "Relational Knowledge Distillation", CVPR 2019,
        arXiv:1904.05068.
    """

    alignment = "batch"

    @staticmethod
    def _normalized_distances(features):
        distances, off_diagonal = _pairwise_distances(_flat(features))
        mean = ops.sum(distances) / ops.maximum(ops.sum(off_diagonal), 1.0)
        return distances / ops.maximum(mean, _EPSILON)

    def __call__(self, teacher_features, student_features):
        return _smooth_l1(
            self._normalized_distances(student_features),
            self._normalized_distances(teacher_features),
        )


@keras.saving.register_keras_serializable(package="keras_kd")
class RKDAngle(FeatureLoss):
    """Relational KD, angle-wise: matches angles formed by sample triplets.

    For every triplet `(a, b, c)`, the cosine of the angle at `a` between
    `e_b - e_a` and `e_c - e_a`; the loss is the smooth-L1 difference averaged
    over all `batch^3` triplets, as in the authors' code. Memory grows with
    `batch^3`.

    Example:

    ```python
    keras_kd.FeatureDistillation(loss=keras_kd.losses.RKDAngle(),
                                 teacher_layer_name="pool",
                                 student_layer_name="pool")
    ```

    Reference:
        Park, Kim, Lu & Cho, "Relational Knowledge Distillation", CVPR 2019,
        arXiv:1904.05068.
    """

    alignment = "batch"

    @staticmethod
    def _angles(features):
        embeddings = _flat(features)
        directions = _l2_normalize(embeddings[None, :, :] - embeddings[:, None, :])
        return ops.matmul(directions, ops.transpose(directions, (0, 2, 1)))

    def __call__(self, teacher_features, student_features):
        return _smooth_l1(self._angles(student_features), self._angles(teacher_features))


@keras.saving.register_keras_serializable(package="keras_kd")
class PKT(FeatureLoss):
    """Probabilistic knowledge transfer: matches the batch's cosine kernels.

    Cosine similarities between the samples' L2-normalized features, mapped
    to [0, 1] and normalized per row into conditional probabilities; the loss
    is `mean(P_t * (log(P_t + eps) - log(P_s + eps)))` over all `batch^2`
    entries, as in the authors' code. Any shapes.

    Args:
        epsilon: the smoothing constant of the logarithms.

    Example:

    ```python
    keras_kd.FeatureDistillation(loss=keras_kd.losses.PKT(),
                                 teacher_layer_name="pool",
                                 student_layer_name="flatten")
    ```

    Reference:
        Passalis & Tefas, "Learning Deep Representations with Probabilistic
        Knowledge Transfer", ECCV 2018, arXiv:1803.10837.
    """

    alignment = "batch"

    def __init__(self, epsilon=1e-7):
        self.epsilon = epsilon

    @staticmethod
    def _conditional_probabilities(features):
        features = _l2_normalize(_flat(features))
        similarity = (ops.matmul(features, ops.transpose(features)) + 1.0) / 2.0
        return similarity / ops.sum(similarity, axis=1, keepdims=True)

    def __call__(self, teacher_features, student_features):
        teacher = self._conditional_probabilities(teacher_features)
        student = self._conditional_probabilities(student_features)
        return ops.mean(
            teacher
            * (ops.log(teacher + self.epsilon) - ops.log(student + self.epsilon))
        )

    def get_config(self):
        return {"epsilon": self.epsilon}


class _KerasFeatureLoss(FeatureLoss):
    """A Keras loss name, instance or function as a feature loss:
    `mean(loss(t, s))`, per position before the mean."""

    def __init__(self, loss):
        self.keras_per_sample, _ = keras_loss_function(
            loss, "a keras_kd feature loss",
            "loss='mse' or loss=keras_kd.losses.AttentionTransfer()",
            names=_names_here(),
        )

    def __call__(self, teacher_features, student_features):
        return ops.mean(self.per_position(teacher_features, student_features))

    def per_position(self, teacher_features, student_features):
        return self.keras_per_sample(
            ops.cast(teacher_features, "float32"), ops.cast(student_features, "float32")
        )


def _resolve(loss):
    """The feature loss of one `loss=` entry of `FeatureDistillation`."""
    if loss is None or isinstance(loss, FeatureLoss):
        return loss
    if isinstance(loss, str):
        from keras_kd import losses  # the table of names; imports this module

        named = losses.lookup(loss)
        if named is not None and issubclass(named, FeatureLoss):
            return named()
        if named is FeatureDistillation:  # the name of this class: its default loss
            return _KerasFeatureLoss("mse")
        if named is not None:
            raise ValueError(losses.refusal(loss, named, "FeatureDistillation", _names_here()))
    return _KerasFeatureLoss(loss)


def _names_here():
    """The names of the table `FeatureDistillation(loss=...)` applies."""
    from keras_kd import losses

    return sorted([*losses.FEATURE_LOSSES, losses.name_of(FeatureDistillation)])


@keras.saving.register_keras_serializable(package="keras_kd")
class FeatureDistillation(DistillationLoss):
    """Distils an intermediate feature of the teacher into the student.

    The drop-in for `keras.distillation.FeatureDistillation`, plus paths into
    nested models, subclassed models, learnable connectors and the feature
    and relation losses of `keras_kd.losses`.

    Args:
        loss: a Keras loss (name, instance or function, applied as
            `mean(loss(teacher, student))`), or a `keras_kd.losses`
            feature loss such as `AttentionTransfer()`. Defaults to `"mse"`
            (FitNets' hint). For models with several final outputs, a list.
        teacher_layer_name: the teacher layer to tap, as a `"parent/child"`
            path into nested models; `None` or `keras_kd.FINAL_OUTPUT` for
            the final output.
        student_layer_name: the student layer, likewise.
        projection: how the student feature is mapped to the teacher's:
            `None` (shapes must already line up), `"auto"` (a learnable
            connector built by `keras_kd.connectors.auto_connector`: resize
            and/or Dense/1x1 convolution, only what is needed) or a
            `keras.layers.Layer`. The connector belongs to the Distiller: it
            is trained and saved with it and is not part of the student.
        name: the name this term is logged under.

    Raises:
        ValueError: if only one of the layer names is given, or `loss` or
            `projection` is not one of the above.

    Example:

    ```python
    keras_kd.FeatureDistillation(teacher_layer_name="backbone/stage3",
                                 student_layer_name="stage2",
                                 loss="mse", projection="auto")
    ```

    Reference:
        Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015,
        arXiv:1412.6550.
    """

    def __init__(
        self,
        loss="mse",
        teacher_layer_name=None,
        student_layer_name=None,
        projection=None,
        name=None,
    ):
        teacher_named = teacher_layer_name is not None
        student_named = student_layer_name is not None
        if teacher_named != student_named:
            given, missing = (
                ("teacher_layer_name", "student_layer_name")
                if teacher_named
                else ("student_layer_name", "teacher_layer_name")
            )
            value = teacher_layer_name if teacher_named else student_layer_name
            raise ValueError(
                f"FeatureDistillation received {given}={value!r} but no "
                f"{missing}, so it is unclear what to compare it with. Pass "
                f"{missing} too, or {missing}=keras_kd.FINAL_OUTPUT to compare "
                f"with the {missing.split('_')[0]}'s final output."
            )
        if not (
            projection is None
            or projection == "auto"
            or isinstance(projection, keras.layers.Layer)
        ):
            raise ValueError(
                f"`projection` must be None, 'auto' or a keras.layers.Layer, "
                f"but received {projection!r}. Pass projection='auto' for a "
                f"learnable connector."
            )
        self.loss = loss
        self.teacher_layer_name = teacher_layer_name
        self.student_layer_name = student_layer_name
        self.projection = projection
        self._loss_fns = map_losses(_resolve, loss)
        if name:
            self.name = name

    def validate_model_compatibility(self, teacher, student):
        for model, path, argument, role in (
            (teacher, self.teacher_layer_name, "teacher_layer_name", "teacher"),
            (student, self.student_layer_name, "student_layer_name", "student"),
        ):
            if path not in (None, FINAL_OUTPUT):
                resolve_layer(model, path, argument, role)

    @property
    def alignment(self):
        """What the loss needs lined up: the strictest of its losses."""
        kinds = {
            fn.alignment
            for fn in keras.tree.flatten(self._loss_fns)
            if fn is not None
        }
        for kind in ("elementwise", "spatial", "batch"):
            if kind in kinds:
                return kind
        return "batch"

    def make_connector(self, teacher_shape, student_shape, name=None):
        """The layer mapping the student feature to the teacher's, or `None`.

        Args:
            teacher_shape: the tapped teacher feature's shape.
            student_shape: the tapped student feature's shape.
            name: the connector's name.

        Returns:
            A built `keras.layers.Layer`, or `None` when no mapping is needed.

        Raises:
            ValueError: if the shapes do not line up and `projection=None`.
        """
        alignment = self.alignment
        if isinstance(self.projection, keras.layers.Layer):
            return connectors.build_connector(self.projection, student_shape)
        if alignment == "batch":
            return None
        teacher_shape, student_shape = tuple(teacher_shape), tuple(student_shape)
        lined_up = (
            teacher_shape[1:] == student_shape[1:]
            if alignment == "elementwise"
            else teacher_shape[1:-1] == student_shape[1:-1]
        )
        if lined_up:
            return None
        if self.projection is None:
            what = "shapes" if alignment == "elementwise" else "spatial sizes"
            raise ValueError(
                f"FeatureDistillation compares teacher "
                f"'{self.teacher_layer_name}' with student "
                f"'{self.student_layer_name}', but their {what} differ: "
                f"teacher {teacher_shape}, student {student_shape}. Pass "
                f"projection='auto' for a learnable connector, or tap layers "
                f"of the same shape."
            )
        return connectors.auto_connector(
            student_shape, teacher_shape,
            resize=True, project=alignment == "elementwise", name=name,
        )

    def compute_loss(self, teacher_outputs, student_outputs, mask=None, **kwargs):
        """Returns the feature loss (summed over outputs, for a structure).

        Args:
            teacher_outputs: the teacher feature (or a list/dict of them).
            student_outputs: the student feature after the connector.
            mask: real positions `(batch, sequence)` of token-level features
                `(batch, sequence, channels)`, or `None`: the loss is then
                the mean over real positions (see `masked_mean`).
            **kwargs: ignored.

        Returns:
            A scalar float32 tensor.

        Raises:
            ValueError: if a token-level feature is masked but the loss
                compares whole samples or the batch (it cannot leave the
                padding out).
        """
        return sum_over_outputs(
            lambda fn, t, s: self._apply(fn, t, s, mask),
            self._loss_fns, teacher_outputs, student_outputs,
        )

    def _apply(self, fn, teacher, student, mask):
        if mask is None or len(teacher.shape) - 1 != len(mask.shape):
            return fn(teacher, student)
        if fn.per_position is None:
            raise ValueError(
                f"{type(fn).__name__} compares whole samples or the batch, so "
                f"it cannot leave out the padding of token-level features "
                f"{tuple(teacher.shape)}. Use loss='mse', Hint() or another "
                f"Keras loss, which are averaged over real tokens only."
            )
        return masked_mean(fn.per_position(teacher, student), mask)

    def get_config(self):
        config = super().get_config()
        config.update(
            loss=map_losses(serialize_loss, self.loss),
            teacher_layer_name=self.teacher_layer_name,
            student_layer_name=self.student_layer_name,
            projection=(
                keras.saving.serialize_keras_object(self.projection)
                if isinstance(self.projection, keras.layers.Layer)
                else self.projection
            ),
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["loss"] = map_losses(deserialize_loss, config["loss"])
        if isinstance(config.get("projection"), dict):
            config["projection"] = keras.saving.deserialize_keras_object(
                config["projection"]
            )
        return cls(**config)



__getattr__ = _validation.moved_attributes(__name__, {"FEATURE_LOSSES": (
    "keras_kd.losses.features.FEATURE_LOSSES is deprecated; use keras_kd.losses.FEATURE_LOSSES "
    "(name -> class, read from keras_kd.losses.LOSSES).",
    lambda: importlib.import_module("keras_kd.losses").FEATURE_LOSSES)})

__all__ = [
    "PKT",
    "AttentionTransfer",
    "CosineDistance",
    "FeatureDistillation",
    "FeatureLoss",
    "Hint",
    "RKDAngle",
    "RKDDistance",
    "SimilarityPreserving",
]
