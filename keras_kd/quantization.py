"""Quantization-aware students: Keras models that compute as their int8 LiteRT file will.

`quantization_aware(student)` rewrites a Functional or Sequential student
(nested sub-models included) into a model with the same weights whose
forward pass, in training and inference, rounds weights and activations
where LiteRT's int8 kernels do. The rounding is TensorFlow's
`FakeQuantWithMinMaxVars` family: the LiteRT converter reads its ranges as
the file's int8 scales (no representative data), and its gradient is the
straight-through estimator (1 inside the range, 0 outside).

Where the rounding is placed (the same points as TFMOT's `default_8bit`
registry, for the same reason: each is a tensor the converter stores in int8):

- the model's float inputs;
- after each convolution or dense layer, with a following
  `BatchNormalization` folded into its kernel and bias and a following
  ReLU/ReLU6 applied before the rounding (the converter fuses them into one
  CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED with a fused activation);
- after adds, multiplies, concatenations, average poolings, rescalings and
  activations that stand alone (hard-swish, sigmoid, softmax, ...);
- not after layers that only move values (reshape, flatten, max pooling,
  padding, dropout): LiteRT keeps their input's scale.

Weights are symmetric int8 ([-127, 127], zero at 0): per output channel for
convolutions and depthwise convolutions (LiteRT's per-channel axis), per
tensor for dense layers (the converter refuses per-channel ranges along the
Keras kernel's last axis: LiteRT stores fully connected weights as
(out, in), "'tfl.transpose' op has mismatched quantized axes"). Weight ranges
are the largest absolute value of the (folded) kernel at each step.
Activation ranges are tracked by an exponential moving average of each
batch's min and max during training, the first batch setting them, as in
Jacob et al. (2018); they are variables saved with the model.

BatchNormalization statistics are frozen: the kernel is folded with the
moving mean and variance in training as in inference, which is what the
converter folds, so training and the file compute the same thing (Jacob et
al. 2018 §3.2 and Krishnamoorthi 2018 §3.2 freeze them for the same
reason). Start from a trained float student; gamma and beta still train.

Reference:
    Jacob et al., 2018, "Quantization and Training of Neural Networks for
    Efficient Integer-Arithmetic-Only Inference", CVPR.
    Krishnamoorthi, 2018, "Quantizing deep convolutional networks for
    efficient inference: A whitepaper", arXiv:1806.08342.
"""

import warnings

import keras
import tensorflow as tf

# Moving-average decay of the activation ranges: the range follows about the
# last 1 / (1 - decay) = 100 batches, short enough for a fine-tune of a few
# hundred steps to settle.
RANGE_DECAY = 0.99
# The smallest range width: a range of width 0 (a ReLU that output only 0 on
# a batch) has no int8 scale.
MIN_RANGE = 1e-3
# LiteRT's fixed output quantization of LOGISTIC and SOFTMAX (scale 1/256,
# zero point -128) and TANH (scale 1/128, zero point 0).
_FIXED_RANGES = {"sigmoid": (0.0, 255 / 256), "softmax": (0.0, 255 / 256),
                 "tanh": (-1.0, 127 / 128)}
# Activations the converter fuses into the convolution or dense layer before them.
_FUSED_ACTIVATIONS = ("linear", "relu", "relu6")

_WEIGHTED = ("Conv1D", "Conv2D", "DepthwiseConv1D", "DepthwiseConv2D", "Dense")
# Layers whose output LiteRT stores at their input's scale.
_PASS_THROUGH = (
    "Flatten", "Reshape", "MaxPooling1D", "MaxPooling2D", "GlobalMaxPooling1D",
    "GlobalMaxPooling2D", "Dropout", "SpatialDropout1D", "SpatialDropout2D",
    "ZeroPadding1D", "ZeroPadding2D", "Cropping1D", "Cropping2D", "Permute",
    "Identity", "GaussianNoise", "GaussianDropout", "AlphaDropout",
    "ActivityRegularization",
)
# Layers, and Keras operations of the same names (`x + 3.0`, `x * (1 / 6)` in
# a Functional graph, as in MobileNetV3's hard-sigmoid), that LiteRT computes
# in int8 with a new output scale.
_REQUANTIZED = (
    "Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate",
    "GlobalAveragePooling1D", "GlobalAveragePooling2D", "AveragePooling1D",
    "AveragePooling2D", "Rescaling", "BatchNormalization", "ReLU", "LeakyReLU",
    "Activation", "Softmax", "UpSampling1D", "UpSampling2D",
)
_ACTIVATIONS = ("linear", "relu", "relu6", "hard_silu", "hard_sigmoid", "sigmoid",
                "softmax", "tanh", "leaky_relu", "silu", "gelu", "elu")


def quantization_aware(student, strict=False):
    """A copy of `student` that simulates LiteRT int8 arithmetic in training and inference.

    The copy has the student's weights (copied, not shared) and its input
    and output names; convolutions and dense layers keep their names (a
    folded `BatchNormalization` or fused ReLU disappears into the layer
    before it). Train it like any student (`keras_kd.Distiller`, `fit`),
    then `keras_kd.export_student(model, "student.tflite",
    quantization="int8")` writes the int8 file from the trained ranges.

    Activation ranges are set by the first training batch and tracked
    afterwards (see the module docstring); until a first training step the
    model runs its activations unrounded.

    Args:
        student: a built Functional or Sequential `keras.Model` (nested
            Functional and Sequential sub-models are rewritten too), with
            float32 layers.
        strict: if True, a layer keras_kd cannot simulate in int8 raises;
            if False (default) it is named in a warning and left in float32
            (the LiteRT file runs it in float between a DEQUANTIZE and a
            QUANTIZE).

    Returns:
        A Functional `keras.Model`.

    Raises:
        ValueError: for a model that is not Functional or Sequential (a
            subclassed model has no graph to rewrite) or not built; a layer
            to simulate whose dtype policy does not compute in float32; a
            layer with no int8 simulation when `strict=True`; a model that
            already is quantization-aware.

    Example:

    ```python
    qat_student = keras_kd.quantization_aware(student)
    distiller = keras_kd.Distiller(teacher, qat_student, keras_kd.LogitsDistillation(4.0))
    distiller.compile(optimizer="adam",
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    distiller.fit(x_train, y_train, epochs=2)
    keras_kd.export_student(qat_student, "student.tflite", quantization="int8")
    ```

    Reference:
        Jacob et al., 2018, "Quantization and Training of Neural Networks for
        Efficient Integer-Arithmetic-Only Inference", CVPR.
    """
    if not isinstance(student, keras.Model):
        raise ValueError(
            f"quantization_aware() takes a keras.Model, but received "
            f"{type(student).__name__}. Pass the student model.")
    if is_quantization_aware(student):
        raise ValueError(
            f"'{student.name}' is already quantization-aware; quantizing it again "
            f"would round twice. Pass the float student.")
    _functional(student)  # refuses a model without a graph before cloning it
    copy = keras.models.clone_model(student)  # fresh layers: the student stays as it was
    copy.set_weights(student.get_weights())
    return _Rewriter(strict).rewrite(_functional(copy))


def is_quantization_aware(model):
    """Whether `model` (at any depth) holds keras_kd fake-quantization layers.

    Args:
        model: a Keras model.

    Returns:
        True if a layer of `model` or of its sub-models is an
        `ActivationQuantizer` or a `QuantizedLayer`.
    """
    return any(isinstance(layer, (ActivationQuantizer, QuantizedLayer))
               for layer in _all_layers(model))


def unset_ranges(model):
    """Names of the activation quantizers of `model` that have not seen a training batch.

    Args:
        model: a quantization-aware model.

    Returns:
        A list of layer names (empty when every range is set).
    """
    names = []
    for layer in _all_layers(model):
        quantizers = [layer] if isinstance(layer, ActivationQuantizer) else []
        if isinstance(layer, QuantizedLayer):
            quantizers = [layer.output_quantizer]
        names += [q.name for q in quantizers
                  if q.fixed_range is None and float(q.initialized.numpy()) == 0.0]
    return names


def output_step(model):
    """The quantization step (scale) of a quantization-aware model's output.

    Args:
        model: a quantization-aware model with one output.

    Returns:
        The scale of the int8 output, as a Python float, or None if the
        output is not produced by a quantizer (e.g. a layer left in float).
    """
    config = model.get_config()
    name = config["output_layers"][0][0] if isinstance(
        config["output_layers"][0], list) else config["output_layers"][0]
    while True:
        layer = model.get_layer(name)
        if isinstance(layer, QuantizedLayer):
            layer = layer.output_quantizer
        if isinstance(layer, ActivationQuantizer):
            return layer.step()
        if isinstance(layer, keras.Model):
            return output_step(layer)
        if type(layer).__name__ not in _PASS_THROUGH:
            return None
        entry = next(e for e in config["layers"] if e["name"] == name)
        name = entry["inbound_nodes"][0]["args"][0]["config"]["keras_history"][0]


# ------------------------------------------------------------------- layers


def _fake_quant(x, minimum, maximum, narrow_range=False):
    return tf.quantization.fake_quant_with_min_max_vars(
        x, minimum, maximum, num_bits=8, narrow_range=narrow_range)


@keras.saving.register_keras_serializable(package="keras_kd")
class ActivationQuantizer(keras.layers.Layer):
    """Rounds a tensor to per-tensor int8 with a tracked (or fixed) range.

    In training the range is the first batch's min and max, then their
    moving average (decay 0.99), both widened to include 0; under
    `tf.distribute` the min and max are taken over all replicas, so every
    replica rounds alike. In inference the saved range is used. Gradients
    pass straight through inside the range.

    Args:
        fixed_range: `(min, max)` for outputs whose int8 scale LiteRT fixes
            (sigmoid, softmax, tanh), else None (tracked).
        **kwargs: `keras.layers.Layer` arguments (name, ...).

    Returns:
        The layer; called on a float32 tensor, the rounded tensor.

    Reference:
        Jacob et al., 2018, "Quantization and Training of Neural Networks for
        Efficient Integer-Arithmetic-Only Inference", CVPR (§3.1, moving
        averages of activation ranges).
    """

    def __init__(self, fixed_range=None, **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        self.fixed_range = None if fixed_range is None else tuple(float(v) for v in fixed_range)
        self.range_min = self.add_weight(name="range_min", shape=(), initializer="zeros",
                                         trainable=False, aggregation="mean")
        self.range_max = self.add_weight(name="range_max", shape=(), initializer="zeros",
                                         trainable=False, aggregation="mean")
        self.initialized = self.add_weight(name="initialized", shape=(), initializer="zeros",
                                           trainable=False, aggregation="mean")

    def call(self, inputs, training=False):
        if self.fixed_range is not None:
            return _fake_quant(inputs, *self.fixed_range)
        if training:
            batch_min, batch_max = _global_min_max(inputs)
            first = self.initialized == 0.0
            new_min = tf.where(first, batch_min,
                               RANGE_DECAY * self.range_min + (1 - RANGE_DECAY) * batch_min)
            new_max = tf.where(first, batch_max,
                               RANGE_DECAY * self.range_max + (1 - RANGE_DECAY) * batch_max)
            new_min = tf.minimum(new_min, 0.0)
            new_max = tf.maximum(tf.maximum(new_max, 0.0), new_min + MIN_RANGE)
            self.range_min.assign(new_min)
            self.range_max.assign(new_max)
            self.initialized.assign(1.0)
            return _fake_quant(inputs, new_min, new_max)
        rounded = _fake_quant(inputs, self.range_min, tf.maximum(self.range_max,
                                                                 self.range_min + MIN_RANGE))
        # Before a first training step there is no range: run unrounded.
        return tf.where(self.initialized > 0.0, rounded, inputs)

    def step(self):
        """The int8 scale of the current range, as the converter nudges it."""
        low, high = self.fixed_range or (float(self.range_min.numpy()),
                                         float(self.range_max.numpy()))
        return (high - low) / 255.0

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.pop("dtype", None)
        config["fixed_range"] = self.fixed_range
        return config


def _global_min_max(x):
    """The batch's min and max, over every replica under `tf.distribute`."""
    batch_min, batch_max = tf.reduce_min(x), tf.reduce_max(x)
    context = tf.distribute.get_replica_context()
    if context is not None and context.num_replicas_in_sync > 1:
        # ReduceOp has no MAX: gather every replica's value and reduce.
        batch_max = tf.reduce_max(context.all_gather(batch_max[None], axis=0))
        batch_min = tf.reduce_min(context.all_gather(batch_min[None], axis=0))
    return tf.stop_gradient(batch_min), tf.stop_gradient(batch_max)


@keras.saving.register_keras_serializable(package="keras_kd")
class QuantizedLayer(keras.layers.Layer):
    """A convolution or dense layer with int8 weights, a folded BatchNormalization and a fused activation.

    Computes `activation(x * fold(kernel) + fold(bias))` with the folded
    kernel rounded to symmetric int8 (per output channel for convolutions,
    per tensor for dense layers), then rounds the output to int8 with an
    `ActivationQuantizer`: what the converter writes as one
    CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED operation.

    Args:
        layer: a `Conv1D`, `Conv2D`, `DepthwiseConv1D`, `DepthwiseConv2D`
            or `Dense` layer (its own activation is not applied; see
            `activation`).
        batch_normalization: the `BatchNormalization` layer applied to its
            output, folded with its moving statistics, or None.
        activation: `"linear"`, `"relu"` or `"relu6"`.
        output_quantizer: the `ActivationQuantizer` of the output (a new one
            when None).
        **kwargs: `keras.layers.Layer` arguments (name, ...).

    Returns:
        The layer.

    Reference:
        Jacob et al., 2018, "Quantization and Training of Neural Networks for
        Efficient Integer-Arithmetic-Only Inference", CVPR (§3.2, batch
        normalization folding).
    """

    def __init__(self, layer, batch_normalization=None, activation="linear",
                 output_quantizer=None, **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        self.layer = layer
        self.batch_normalization = batch_normalization
        self.activation = activation
        self.output_quantizer = output_quantizer or ActivationQuantizer(
            name=f"{self.name}_output_quantizer")
        self._kind = type(layer).__name__

    def build(self, input_shape):
        if not self.layer.built:
            self.layer.build(input_shape)
        if self.batch_normalization is not None and not self.batch_normalization.built:
            self.batch_normalization.build(self.layer.compute_output_shape(input_shape))
        self.output_quantizer.build(self.layer.compute_output_shape(input_shape))
        self.built = True

    def folded(self):
        """The folded kernel and bias (before rounding), as the converter folds them."""
        layer = self.layer
        kernel = layer.kernel
        bias = layer.bias if layer.use_bias else None
        norm = self.batch_normalization
        if norm is None:
            return kernel, bias
        factor = tf.math.rsqrt(norm.moving_variance + norm.epsilon)
        if norm.scale:
            factor = factor * norm.gamma
        shift = -norm.moving_mean * factor
        if bias is not None:
            shift = shift + bias * factor
        if norm.center:
            shift = shift + norm.beta
        if self._kind.startswith("Depthwise"):
            kernel = tf.reshape(kernel * tf.reshape(factor, kernel.shape[-2:]), kernel.shape)
        else:
            kernel = kernel * factor
        return kernel, shift

    def quantized_kernel(self):
        """The folded kernel rounded to symmetric int8, per channel or per tensor.

        A 1-D convolution's kernel comes out with a leading axis of 1, the
        2-D kernel TensorFlow and LiteRT run it with.
        """
        kernel, _ = self.folded()
        if self._kind.endswith("1D"):
            kernel = kernel[None]
        if self._kind == "Dense":
            bound = tf.stop_gradient(tf.maximum(tf.reduce_max(tf.abs(kernel)), 1e-8))
            return _fake_quant(kernel, -bound, bound, narrow_range=True)
        shape = kernel.shape
        # LiteRT's channel axis: the output channel of a convolution, the
        # input channel times the multiplier of a depthwise convolution.
        flat = tf.reshape(kernel, (*shape[:-2], shape[-2] * shape[-1])) \
            if self._kind.startswith("Depthwise") else kernel
        bound = tf.stop_gradient(tf.maximum(
            tf.reduce_max(tf.abs(flat), axis=tuple(range(len(flat.shape) - 1))), 1e-8))
        rounded = tf.quantization.fake_quant_with_min_max_vars_per_channel(
            flat, -bound, bound, num_bits=8, narrow_range=True)
        return tf.reshape(rounded, shape)

    def call(self, inputs, training=False):
        layer = self.layer
        kernel = self.quantized_kernel()
        _, bias = self.folded()
        if self._kind == "Dense":
            outputs = keras.ops.matmul(inputs, kernel)
        else:
            strides, dilation = tuple(layer.strides), tuple(layer.dilation_rate)
            one_d = self._kind.endswith("1D")
            if one_d:
                # TensorFlow runs a 1-D convolution as a 2-D one on expanded
                # tensors; expanding here, before the rounding, keeps the
                # per-channel axis where the converter looks for it.
                # The squeeze comes after the output rounding, so that the
                # convolution's own output carries the int8 range.
                inputs = keras.ops.expand_dims(inputs, 1)
                strides, dilation = (1, *strides), (1, *dilation)
            convolve = (keras.ops.depthwise_conv if self._kind.startswith("Depthwise")
                        else keras.ops.conv)
            outputs = convolve(inputs, kernel, strides=strides, padding=layer.padding,
                               data_format=layer.data_format, dilation_rate=dilation)
        if bias is not None:
            outputs = outputs + tf.reshape(bias, (-1,))
        if self.activation == "relu":
            outputs = tf.nn.relu(outputs)
        elif self.activation == "relu6":
            outputs = tf.nn.relu6(outputs)
        outputs = self.output_quantizer(outputs, training=training)
        if self._kind.endswith("1D"):
            outputs = keras.ops.squeeze(outputs, 1)
        return outputs

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def get_config(self):
        config = super().get_config()
        config.pop("dtype", None)
        config.update(
            layer=keras.saving.serialize_keras_object(self.layer),
            batch_normalization=keras.saving.serialize_keras_object(self.batch_normalization),
            activation=self.activation,
            output_quantizer=keras.saving.serialize_keras_object(self.output_quantizer),
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("layer", "batch_normalization", "output_quantizer"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)


# ------------------------------------------------------------------ rewrite


def _all_layers(model):
    for layer in getattr(model, "layers", []):
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


def _functional(model):
    """A Functional model over the layers of a Functional or Sequential model."""
    if isinstance(model, keras.Sequential):
        try:
            return keras.Model(model.inputs, model.outputs, name=model.name)
        except (AttributeError, ValueError) as error:
            raise ValueError(
                f"quantization_aware() rewrites a model's graph, but the Sequential "
                f"'{model.name}' has none ({error}). Start it with keras.Input(shape=...)."
            ) from error
    if not getattr(model, "_is_graph_network", False) and not _has_graph(model):
        raise ValueError(
            f"quantization_aware() rewrites a model's graph, but '{model.name}' "
            f"({type(model).__name__}) is a subclassed model without one. Build the "
            f"student with the Functional API or keras.Sequential.")
    return model


def _has_graph(model):
    try:
        return bool(model.inputs) and bool(model.outputs)
    except (AttributeError, ValueError):
        return False


def _activation_name(function):
    try:
        name = keras.activations.serialize(function)
    except (ValueError, TypeError):
        return None
    return name if isinstance(name, str) else None


def _relu_kind(layer):
    """'relu', 'relu6' or None for a layer that is (only) one of them."""
    kind = type(layer).__name__
    if kind == "ReLU":
        config = layer.get_config()
        if config.get("negative_slope", 0) or config.get("threshold", 0):
            return None
        return {None: "relu", 6.0: "relu6"}.get(
            None if config.get("max_value") is None else float(config["max_value"]))
    if kind == "Activation":
        name = _activation_name(layer.activation)
        return name if name in ("relu", "relu6") else None
    return None


class _Rewriter:
    """Rebuilds a Functional model with quantizers, one graph at a time."""

    def __init__(self, strict):
        self.strict = strict

    def rewrite(self, model, quantized_inputs=False):
        """The quantization-aware copy of a Functional `model`.

        `quantized_inputs`: the inputs arrive already rounded (a sub-model
        fed by quantized tensors), so they get no quantizer of their own.
        """
        consumers, calls = self._trace(model)
        self.consumers, self.calls = consumers, calls
        self.absorbed = {}  # id(layer) -> the QuantizedLayer that computes it
        self.quantized = set()  # ids of tensors already on an int8 grid
        self.input_quantizers = {}
        self.names = {layer.name for layer in model.layers}
        inputs = keras.tree.map_structure(
            lambda x: keras.Input(batch_shape=x.shape, dtype=x.dtype, name=x.name), model.input)
        if quantized_inputs:
            self.quantized.update(id(x) for x in keras.tree.flatten(inputs))
        return keras.models.clone_model(
            model, input_tensors=inputs, clone_function=lambda layer: layer,
            call_function=self._call)

    def _trace(self, model):
        """Which operations consume each operation's output, and how often each runs."""
        producer, consumers, calls = {}, {}, {}

        def record(operation, *args, **kwargs):
            outputs = operation(*args, **kwargs)
            calls[id(operation)] = calls.get(id(operation), 0) + 1
            for tensor in keras.tree.flatten((args, kwargs)):
                if id(tensor) in producer:
                    consumers.setdefault(producer[id(tensor)], []).append(operation)
            for tensor in keras.tree.flatten(outputs):
                producer[id(tensor)] = id(operation)
            return outputs

        keras.models.clone_model(model, clone_function=lambda layer: layer, call_function=record)
        return consumers, calls

    def _only_consumer(self, operation, kind):
        following = self.consumers.get(id(operation), [])
        if len(following) == 1 and self.calls.get(id(operation)) == 1:
            return following[0] if kind(following[0]) else None
        return None

    def _unique(self, name):
        candidate, i = name, 1
        while candidate in self.names:
            candidate, i = f"{name}_{i}", i + 1
        self.names.add(candidate)
        return candidate

    def _quantize_inputs(self, args, kwargs):
        def quantize(tensor):
            if not isinstance(tensor, keras.KerasTensor) or tensor.dtype != "float32" \
                    or id(tensor) in self.quantized:
                return tensor
            if id(tensor) not in self.input_quantizers:
                quantizer = ActivationQuantizer(name=self._unique(f"{tensor.name}_quantizer"))
                output = quantizer(tensor)
                self.quantized.add(id(output))
                self.input_quantizers[id(tensor)] = output
            return self.input_quantizers[id(tensor)]

        return keras.tree.map_structure(quantize, (args, kwargs))

    def _requantize(self, outputs, name, fixed_range=None):
        def quantize(tensor):
            if not isinstance(tensor, keras.KerasTensor) or tensor.dtype != "float32":
                return tensor
            output = ActivationQuantizer(fixed_range, name=self._unique(f"{name}_quantizer"))(tensor)
            self.quantized.add(id(output))
            return output

        return keras.tree.map_structure(quantize, outputs)

    def _check_policy(self, layer):
        policy = getattr(layer, "dtype_policy", None)
        if policy is not None and policy.compute_dtype != "float32":
            raise ValueError(
                f"quantization_aware() simulates int8 arithmetic in float32, but layer "
                f"'{layer.name}' computes in {policy.compute_dtype} (dtype policy "
                f"'{policy.name}'): TensorFlow's fake-quantization ops take float32 only, "
                f"and float16's 11-bit mantissa cannot hold the int8 grid times a float32 "
                f"scale exactly, so the simulation would not be the file. Build the student "
                f"with dtype='float32' (keras.config.set_dtype_policy('float32') before "
                f"building it); mixed precision may stay on the teacher.")

    def _call(self, operation, *args, **kwargs):
        if id(operation) in self.absorbed:
            return args[0]  # folded into the QuantizedLayer before it
        kind = type(operation).__name__
        if isinstance(operation, keras.Model):
            args, kwargs = self._quantize_inputs(args, kwargs)
            inner = _Rewriter(self.strict).rewrite(_functional(operation), quantized_inputs=True)
            outputs = inner(*args, **kwargs)
            self.quantized.update(id(t) for t in keras.tree.flatten(outputs))
            return outputs
        args, kwargs = self._quantize_inputs(args, kwargs)
        if kind in _WEIGHTED and self._supported_weighted(operation):
            self._check_policy(operation)
            return self._weighted(operation, args, kwargs)
        if kind in _PASS_THROUGH:
            outputs = operation(*args, **kwargs)
            self.quantized.update(id(t) for t in keras.tree.flatten(outputs))
            return outputs
        if kind == "Rescaling" and operation.get_config()["offset"] != 0.0:
            return self._rescaling(operation, args[0])
        if kind in _REQUANTIZED and self._supported_activation(operation):
            self._check_policy(operation)
            outputs = operation(*args, **kwargs)
            return self._requantize(outputs, operation.name, self._fixed_range(operation))
        self._left_in_float(operation)
        outputs = operation(*args, **kwargs)
        return self._requantize(outputs, operation.name)

    def _rescaling(self, layer, inputs):
        # LiteRT runs `x * scale + offset` as a MUL and an ADD: each output is int8.
        self._check_policy(layer)
        config = layer.get_config()
        scaled = self._requantize(keras.ops.multiply(inputs, config["scale"]),
                                  f"{layer.name}_scale")
        return self._requantize(keras.ops.add(scaled, config["offset"]), layer.name)

    def _supported_weighted(self, layer):
        if layer.get_config().get("data_format", "channels_last") != "channels_last":
            return False
        if getattr(layer, "padding", "valid") == "causal" or getattr(layer, "groups", 1) != 1:
            return False
        return _activation_name(layer.activation) in _ACTIVATIONS

    def _supported_activation(self, operation):
        if type(operation).__name__ != "Activation":
            return True
        return _activation_name(operation.activation) in _ACTIVATIONS

    def _fixed_range(self, operation):
        kind = type(operation).__name__
        if kind == "Softmax":
            return _FIXED_RANGES["softmax"]
        if kind == "Activation":
            return _FIXED_RANGES.get(_activation_name(operation.activation))
        return None

    def _left_in_float(self, operation):
        message = (
            f"quantization_aware(): '{operation.name}' ({type(operation).__name__}) has no "
            f"int8 simulation in keras_kd, so it is left in float32: the simulation runs it "
            f"unrounded and rounds its output to int8, and the LiteRT file runs it in float "
            f"between a DEQUANTIZE and a QUANTIZE. Supported: {', '.join(_WEIGHTED)} "
            f"(channels_last, groups=1, not causal), {', '.join(sorted(set(_REQUANTIZED)))}, "
            f"and layers that move values ({', '.join(_PASS_THROUGH)})."
        )
        if self.strict:
            raise ValueError(message + " Pass strict=False to accept it in float32, or "
                                       "replace the layer with supported ones.")
        warnings.warn(message, stacklevel=4)

    def _weighted(self, layer, args, kwargs):
        own = _activation_name(layer.activation)
        norm = None
        if own == "linear":
            rank = len(layer.compute_output_shape(args[0].shape))
            norm = self._only_consumer(layer, lambda op: type(op).__name__ == "BatchNormalization"
                                       and op.axis in (-1, rank - 1))
        activation = own if own in _FUSED_ACTIVATIONS else "linear"
        if activation == "linear":
            following = self._only_consumer(norm or layer, lambda op: _relu_kind(op) is not None)
            if following is not None:
                activation = _relu_kind(following)
                self.absorbed[id(following)] = layer
        if norm is not None:
            self._check_policy(norm)
            self.absorbed[id(norm)] = layer
        inner = layer.__class__.from_config(layer.get_config())
        inner.build(args[0].shape)
        inner.set_weights(layer.get_weights())
        folded_norm = None
        if norm is not None:
            folded_norm = norm.__class__.from_config(norm.get_config())
            folded_norm.build(layer.compute_output_shape(args[0].shape))
            folded_norm.set_weights(norm.get_weights())
        wrapper = QuantizedLayer(inner, folded_norm, activation, name=layer.name)
        outputs = wrapper(args[0])
        self.quantized.add(id(outputs))
        if own not in _FUSED_ACTIVATIONS:
            # An activation LiteRT runs as its own operation (hard-swish, ...).
            outputs = keras.layers.Activation(own, dtype="float32",
                                              name=self._unique(f"{layer.name}_{own}"))(outputs)
            outputs = self._requantize(outputs, f"{layer.name}_{own}", _FIXED_RANGES.get(own))
        return outputs


__all__ = [
    "ActivationQuantizer",
    "MIN_RANGE",
    "QuantizedLayer",
    "RANGE_DECAY",
    "is_quantization_aware",
    "output_step",
    "quantization_aware",
    "unset_ranges",
]
