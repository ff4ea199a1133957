"""Layer paths -> one multi-output view per model, so each model runs once."""

import keras
import tensorflow as tf
from keras import ops

OUTPUT = "output"
LOGITS = "logits"


class ModelView:
    """Runs a model once and returns its final output, logits and taps.

    Args:
        model: a `keras.Model`.
        layer_paths: layer names whose outputs the losses read.

    Example:

    ```python
    view = ModelView(model, ["dense"])
    outputs = view(x, training=False)  # {"output", "logits", "dense"}
    ```
    """

    def __init__(self, model, layer_paths=()):
        self.model = model
        self.layer_paths = tuple(dict.fromkeys(layer_paths))
        self.outputs_probabilities = ends_with_softmax(model)
        if self.layer_paths:
            self._graph = keras.Model(
                model.inputs,
                {
                    OUTPUT: model.outputs[0]
                    if len(model.outputs) == 1
                    else model.outputs,
                    **{
                        path: model.get_layer(path).output
                        for path in self.layer_paths
                    },
                },
                name=f"{model.name}_view",
            )
        else:
            self._graph = None

    def __call__(self, x, training):
        if self._graph is None:
            outputs = {OUTPUT: self.model(x, training=training)}
        else:
            outputs = dict(self._graph(x, training=training))
        outputs[LOGITS] = (
            keras.tree.map_structure(log_probabilities, outputs[OUTPUT])
            if self.outputs_probabilities
            else outputs[OUTPUT]
        )
        return outputs


    def output_spec(self):
        """`tf.TensorSpec`s of what `__call__` returns, or `None` if unknown."""
        if self._graph is not None:
            outputs = dict(self._graph.output)
        else:
            try:
                outputs = {OUTPUT: self.model.output}
            except (AttributeError, ValueError):
                return None
        spec = keras.tree.map_structure(
            lambda t: tf.TensorSpec(t.shape, t.dtype), outputs
        )
        spec[LOGITS] = (
            keras.tree.map_structure(
                lambda s: tf.TensorSpec(s.shape, "float32"), spec[OUTPUT]
            )
            if self.outputs_probabilities
            else spec[OUTPUT]
        )
        return spec


def log_probabilities(probabilities):
    """log(p) in float32, floored at the smallest normal float32."""
    probabilities = ops.cast(probabilities, "float32")
    return ops.log(ops.maximum(probabilities, 1.1754944e-38))


def ends_with_softmax(model):
    """Whether every final output of a Functional/Sequential model is softmax.

    Subclassed models have no graph to inspect: their outputs are taken to be
    logits.
    """
    try:
        outputs = model.outputs
    except (AttributeError, ValueError):
        return False
    if not outputs:
        return False
    return all(_is_softmax(o._keras_history.operation) for o in outputs)


def _is_softmax(layer):
    if isinstance(layer, keras.layers.Softmax):
        return True
    return getattr(layer, "activation", None) is keras.activations.softmax
