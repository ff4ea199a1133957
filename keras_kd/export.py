"""Student-only export (.keras, SavedModel, .tflite) and its parity report."""

import collections
import os
import tempfile

import keras
import numpy as np
import tensorflow as tf

from keras_kd import _extras, _keras_compat, _validation, lm
from keras_kd import quantization as qat
from keras_kd._files import atomic_path, check_destination

QUANTIZATIONS = (None, "float16", "dynamic", "int8")
REPRESENTATIVE_SAMPLES = 200
# Operations that only move values between float32 and int8 at the edges of
# quantized regions; every other operation on float32 tensors computes in float.
_CONVERSIONS = ("QUANTIZE", "DEQUANTIZE")


def export_student(
    distiller_or_model,
    path,
    quantization=None,
    representative_data=None,
    sample_inputs=None,
    evaluation_data=None,
    int8_io=False,
    force=False,
):
    """Writes the student alone and, given inputs, reports how close the file is to it.

    The file is written by this function; the comparison with the Keras
    student is `parity_report`'s, called here when there are inputs to
    compare on (`sample_inputs`, `evaluation_data` or `representative_data`).

    Inputs may be one array (a one-input student) or a dict of arrays keyed
    like the student's inputs, e.g. a KerasHub language model's
    `{"token_ids": int32 (batch, sequence), "padding_mask": (batch, sequence)}`;
    integer and boolean arrays are cast to the dtype of the student's input.
    In a `.tflite` file the arrays are fed to the signature inputs of the
    same names, never by position.

    Args:
        distiller_or_model: a `keras_kd.Distiller` (its `student` is
            exported, never the teacher or connectors) or a Keras model.
        path: where to write: `*.keras`, `*.tflite`, or any other path for a
            SavedModel folder.
        quantization: for `.tflite` only: `None` (float32), `"float16"`,
            `"dynamic"` (dynamic-range int8 weights) or `"int8"` (full
            integer, calibrated on `representative_data`; for a student
            made by `keras_kd.quantization_aware`, from its trained ranges,
            without calibration). Integer inputs
            such as token ids stay int32 in an int8 file: the converter
            quantizes float tensors only (an embedding table becomes int8,
            the ids that index it do not).
        representative_data: inputs for int8 calibration: a `tf.data.Dataset`
            (of inputs, `(x, y)` or `(x, y, sample_weight)`, batched or not),
            an array or dict of arrays, or a generator (or a function
            returning one) of input batches. Up to 200 samples are used.
            A quantization-aware student needs none (its int8 ranges are
            the trained ones); given, it only supplies parity inputs.
        sample_inputs: inputs to compare the exported model with the Keras
            student on (see `parity_report`); defaults to the inputs of
            `evaluation_data`, else the first 200 samples of
            `representative_data`.
        evaluation_data: `(x, y)` or `(x, y, sample_weight)` with class-id
            labels, or a `tf.data.Dataset` of them: the report then has the
            accuracy of both.
        int8_io: with `"int8"`, make the model's float inputs and its outputs
            int8 too (for integer-only accelerators); they are float32
            otherwise. Integer inputs stay int32.
        force: replace an existing file or folder at `path`. The file is
            written beside `path` and renamed onto it, so an interrupted
            export never leaves a truncated file.

    Returns:
        A dict: `path`, `format`, `quantization`, `bytes`,
        `size_ratio_to_keras_student`, `size_ratio_to_teacher` (when a
        Distiller was given), `float_operations` for int8 files (see
        below), and with inputs to compare on, the entries of
        `parity_report`: `max_abs_difference`, `top1_agreement`, and with
        evaluation data `accuracy_exported`, `accuracy_keras`; for the
        `.tflite` file of a quantization-aware student, the step entries of
        `parity_report`.
        `float_operations` counts the operations of an int8 file that still
        compute in float32, by operation type (`{}` for a fully integer
        file; QUANTIZE/DEQUANTIZE at the edges of int8 regions are not
        counted). For a GPT-2 student the converter leaves, for example,
        the `NEG` of each layer normalization and the position `RANGE`.

    Raises:
        ValueError: for an unknown quantization, a quantization requested for
            a non-`.tflite` path, `"int8"` without representative data, a
            student with a list of several inputs or dict keys unlike its
            input names, a `path` that exists (without `force`) or cannot be
            written, a quantization-aware student that has not trained a
            step (its ranges are unset) (all checked before the conversion); and for
            `int8_io=True` when the converter leaves operations in float32
            (the file would not run on an integer-only accelerator; nothing
            is written).
        RuntimeError: if the converter cannot lower the student.
        ModuleNotFoundError: for a `.tflite` path without the 'export'
            extra (`pip install "keras-kd[export]"`), before converting.

    Example:

    ```python
    report = keras_kd.export_student(distiller, "student.tflite",
                                     quantization="int8",
                                     representative_data=x_train,
                                     evaluation_data=(x_test, y_test))
    ```
    """
    student, teacher = _student_and_teacher(distiller_or_model)
    _validation.check_built(student, "student", "there is nothing trained to export")
    path = os.fspath(path)
    kind = format_of(path)
    aware = quantization == "int8" and qat.is_quantization_aware(student)
    check_arguments(kind, quantization, representative_data, aware)
    if aware:
        _check_ranges(student)
    if kind == "tflite":
        _litert_interpreter("keras_kd.export_student")  # before converting, not after
    _input_structure(student)  # refuses inputs it cannot match by name, before converting
    check_destination(path, force, "Export", "folder" if kind == "saved_model" else "file")

    float_operations = None
    with atomic_path(path, force) as partial:
        if kind == "keras":
            student.save(partial)
        elif kind == "saved_model":
            student.export(partial, format="tf_saved_model", verbose=False)
        else:
            _write_tflite(student, partial, quantization, representative_data, int8_io, aware)
            if quantization == "int8":
                float_operations = _float_operations(partial)
                if int8_io and float_operations:
                    raise ValueError(_not_integer_only(student, float_operations))

    report = {
        "path": path,
        "format": kind,
        "quantization": quantization or "float32",
        "bytes": _size(path),
    }
    report["size_ratio_to_keras_student"] = report["bytes"] / _keras_size(student)
    if teacher is not None:
        report["size_ratio_to_teacher"] = report["bytes"] / sum(
            _keras_size(t) for t in teacher
        )
    if float_operations is not None:
        report["float_operations"] = float_operations

    if sample_inputs is None and evaluation_data is None and representative_data is not None:
        sample_inputs = _stack(list(_samples(representative_data, student)))
    if sample_inputs is not None or evaluation_data is not None:
        report.update(parity_report(path, student, sample_inputs, evaluation_data))
    return report


def parity_report(path, student, sample_inputs=None, evaluation_data=None):
    """Runs an exported file and the Keras student on the same inputs and compares them.

    The file is run by `load_predictor` (`.tflite` in the LiteRT
    interpreter, inputs fed by name), the student by `student.predict`.

    What is compared: the largest absolute difference of the outputs over
    every position, padding included (the file must reproduce the model
    everywhere); top-1 agreement and accuracies are weighted means over
    samples, or for token outputs `(batch, sequence, vocabulary)` over
    tokens. For token outputs the weights are the mask of real tokens the
    Distiller uses (`keras_kd.lm.token_mask`): the `sample_weight` of
    `(x, y, sample_weight)` data when it has one weight per token, else the
    `padding_mask` input, so padding never counts. For other outputs they
    are the `sample_weight`, else 1.

    Args:
        path: a file or folder written by `export_student`.
        student: the Keras model that was exported.
        sample_inputs: inputs to compare on: an array or dict of arrays
            (see `export_student`), or a `tf.data.Dataset` of inputs,
            `(x, y)` or `(x, y, sample_weight)`. Defaults to the inputs of
            `evaluation_data`.
        evaluation_data: `(x, y)` or `(x, y, sample_weight)` arrays with
            class-id labels (token ids for a language model), or a
            `tf.data.Dataset` of them.

    Returns:
        A dict: `max_abs_difference` and `top1_agreement` (on
        `sample_inputs`, else on the inputs of `evaluation_data`) and, with
        `evaluation_data`, `accuracy_exported` and `accuracy_keras`. For a
        `.tflite` file of a quantization-aware student (whose forward pass
        simulates the file), also `output_quantization_step` (the int8
        scale of its output), `max_abs_difference_in_steps` and
        `within_one_step` (the fraction of output values that differ by at
        most one step; integer kernels round each layer's output on their
        own, so a difference of one step in a layer can grow in the next).

    Raises:
        ValueError: if neither inputs nor evaluation data are given, or all
            their weights are 0; if the inputs do not match the student's
            (dict keys), if float values that are not whole numbers go to an
            integer input, or if a `sample_weight` or label does not fit the
            output's shape.
        ModuleNotFoundError: for a `.tflite` file without the 'export'
            extra (`pip install "keras-kd[export]"`).

    Example:

    ```python
    keras_kd.export_student(student, "student.tflite")
    keras_kd.export.parity_report("student.tflite", student, evaluation_data=(x_test, y_test))
    ```
    """
    if sample_inputs is None and evaluation_data is None:
        raise ValueError(
            "parity_report() compares the file with the student on inputs, but "
            "sample_inputs and evaluation_data are both None. Pass one of them."
        )
    if format_of(os.fspath(path)) == "tflite":
        _litert_interpreter("keras_kd.export.parity_report")
    predict = load_predictor(path)
    step = (qat.output_step(student) if format_of(os.fspath(path)) == "tflite"
            and qat.is_quantization_aware(student) else None)
    compared = _compare(predict, student, evaluation_data if sample_inputs is None else sample_inputs,
                        step)
    if compared["weight"] == 0:
        raise ValueError(
            "parity_report() found nothing to compare: the inputs are empty or every "
            "sample_weight (or padding_mask) is 0. Pass inputs with real samples or tokens."
        )
    report = {
        "max_abs_difference": compared["max_abs_difference"],
        "top1_agreement": compared["agreement"] / compared["weight"],
    }
    if step:
        report["output_quantization_step"] = step
        report["max_abs_difference_in_steps"] = compared["max_abs_difference"] / step
        report["within_one_step"] = compared["within_step"] / compared["values"]
    if evaluation_data is not None:
        if sample_inputs is not None:
            compared = _compare(predict, student, evaluation_data)
        if compared["labelled"]:
            report["accuracy_exported"] = compared["correct_exported"] / compared["weight"]
            report["accuracy_keras"] = compared["correct_keras"] / compared["weight"]
    return report


def load_predictor(path):
    """A NumPy function `x -> outputs` for an exported student file.

    `.tflite` files run in the LiteRT interpreter (`ai-edge-litert`), one
    sample at a time, each array fed to the signature input of its name,
    with int8 inputs/outputs (de)quantized as the file says.

    Args:
        path: a file written by `export_student`.

    Returns:
        A function from a batch (an array, or a dict of arrays keyed by the
        model's input names) to a float32 NumPy array.

    Raises:
        ValueError: (from the returned function) if a dict's keys are not the
            file's input names, or a `.tflite` file has several outputs.
        ModuleNotFoundError: for a `.tflite` file without the 'export'
            extra (`pip install "keras-kd[export]"`).

    Example:

    ```python
    predict = load_predictor("student.tflite")
    logits = predict({"token_ids": ids, "padding_mask": mask})
    ```
    """
    kind = format_of(os.fspath(path))
    if kind == "keras":
        model = keras.models.load_model(path)
        return lambda x: model.predict(x, batch_size=256, verbose=0)
    if kind == "saved_model":
        loaded = tf.saved_model.load(path)  # keep it alive: it owns the variables
        return lambda x: np.asarray(loaded.serve(keras.tree.map_structure(tf.constant, x)))
    return _litert_predictor(path)


def format_report(report):
    """The report as a two-column text table."""
    labels = {
        "path": "file",
        "format": "format",
        "quantization": "quantization",
        "bytes": "size (bytes)",
        "size_ratio_to_keras_student": "size / Keras student",
        "size_ratio_to_teacher": "size / teacher",
        "max_abs_difference": "max |exported - Keras|",
        "top1_agreement": "top-1 agreement",
        "accuracy_exported": "accuracy, exported",
        "accuracy_keras": "accuracy, Keras student",
        "float_operations": "float32 operations left",
        "output_quantization_step": "output int8 step",
        "max_abs_difference_in_steps": "max |exported - Keras| / step",
        "within_one_step": "outputs within one step",
    }
    rows = []
    for key, label in labels.items():
        if key not in report:
            continue
        value = report[key]
        if key in ("top1_agreement", "accuracy_exported", "accuracy_keras", "within_one_step"):
            value = f"{100 * value:.1f}%"
        elif key.startswith("size_ratio"):
            value = f"{value:.3f}"
        elif key in ("max_abs_difference", "output_quantization_step"):
            value = f"{value:.2e}"
        elif key == "max_abs_difference_in_steps":
            value = f"{value:.2f}"
        elif key == "bytes":
            value = f"{value:,}"
        elif key == "float_operations":
            value = ", ".join(f"{name} x{count}" for name, count in value.items()) or "none"
        rows.append((label, str(value)))
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label.ljust(width)}  {value}" for label, value in rows)


# ---------------------------------------------------------------- helpers


def _student_and_teacher(distiller_or_model):
    student = getattr(distiller_or_model, "student", None)
    if student is not None:
        return student, list(getattr(distiller_or_model, "teachers", []))
    if isinstance(distiller_or_model, keras.Model):
        return distiller_or_model, None
    raise ValueError(
        f"export_student() takes a keras_kd.Distiller or a keras.Model, but "
        f"received {type(distiller_or_model).__name__}. Pass the distiller "
        f"or distiller.student."
    )


def format_of(path):
    """The export format a path names, from its suffix.

    Args:
        path: an export destination (str).

    Returns:
        `"keras"`, `"tflite"` or `"saved_model"` (a folder without a suffix).

    Raises:
        ValueError: for another suffix (`.h5`, a typo such as `.tfite`),
            which would otherwise silently become a SavedModel folder.
    """
    if path.endswith(".keras"):
        return "keras"
    if path.endswith(".tflite"):
        return "tflite"
    suffix = os.path.splitext(os.path.basename(os.path.normpath(path)))[1]
    if suffix:
        raise ValueError(
            f"Export path '{path}' ends in '{suffix}', which is not an export format. Use "
            f".tflite (LiteRT), .keras, or a folder name without a suffix for a SavedModel."
        )
    return "saved_model"


def check_arguments(kind, quantization, representative_data, quantization_aware=False):
    """Refuses export arguments that do not fit together, before converting.

    Args:
        kind: `format_of(path)`.
        quantization: one of `QUANTIZATIONS`.
        representative_data: the calibration inputs, or `None`.
        quantization_aware: the student carries its own int8 ranges
            (`keras_kd.quantization_aware`), so int8 needs no calibration.

    Raises:
        ValueError: for an unknown quantization, a quantization of a
            non-`.tflite` export, or int8 without calibration inputs.
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(
            f"Unknown quantization {quantization!r}. Pass one of "
            f"{list(QUANTIZATIONS)}."
        )
    if quantization is not None and kind != "tflite":
        raise ValueError(
            f"quantization={quantization!r} applies to .tflite files, but the "
            f"path is a {kind} export. Give the path a .tflite suffix, or "
            f"leave quantization=None."
        )
    if quantization == "int8" and representative_data is None and not quantization_aware:
        raise ValueError(
            "quantization='int8' calibrates activation ranges on sample "
            "inputs, but representative_data is None. Pass "
            "representative_data= a few hundred training inputs (a NumPy "
            "array, a tf.data.Dataset or a generator), or use "
            "quantization='dynamic', which needs none."
        )


def _check_ranges(student):
    unset = qat.unset_ranges(student)
    if unset:
        raise ValueError(
            f"'{student.name}' is quantization-aware, and its int8 file takes its "
            f"activation ranges from training, but {len(unset)} range(s) were never set "
            f"(e.g. {unset[:3]}): the model has not trained a step. Train it (fit, or a "
            f"Distiller) before exporting, or export the float student with "
            f"representative_data for post-training int8."
        )


def _write_tflite(student, path, quantization, representative_data, int8_io, aware=False):
    options = {}
    if quantization is not None:
        options["optimizations"] = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        options["target_spec"] = {"supported_types": [tf.float16]}
    if aware:
        # The fake-quantization ranges are the file's int8 parameters: no
        # calibration, and no INT8-only op set, so what stays float is listed.
        if int8_io:
            options["inference_input_type"] = tf.int8
            options["inference_output_type"] = tf.int8
    elif quantization == "int8":
        samples = list(_samples(representative_data, student))
        check_sample_shapes(samples[:1], student, "representative_data")
        # One input goes as a list; several as a dict keyed by signature input name.
        options["representative_dataset"] = lambda: (
            s if isinstance(s, dict) else [s] for s in samples)
        options["target_spec"] = {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]}
        if int8_io:
            options["inference_input_type"] = tf.int8
            options["inference_output_type"] = tf.int8
    try:
        _keras_compat.export_litert(student, path, **options)
    except Exception as error:  # noqa: BLE001 - the converter raises many kinds
        raise RuntimeError(
            f"The TFLite converter could not lower the student "
            f"'{student.name}' with quantization={quantization!r} "
            f"({_converter_cause(error)}). Try quantization=None or "
            f"'dynamic' (no integer-only kernels needed), or replace the "
            f"layer the converter names with TFLite-supported operations."
        ) from error


def check_sample_shapes(samples, student, what):
    """Raises if input samples do not have the student's input shape.

    Run before the converter, whose own message for this blames the
    conversion (a shape error deep in its calibration).

    Args:
        samples: single-sample batches (arrays or dicts), e.g. from `_samples`.
        student: the model being exported.
        what: the argument the samples come from, for the message.

    Raises:
        ValueError: naming the shape received and the shape expected.
    """
    structure = _input_structure(student)
    if structure is None:
        return
    def shapes(value, shape_of):  # {name: shape} for a dict, {None: shape} for one input
        items = value.items() if isinstance(value, dict) else [(None, value)]
        return {key: tuple(shape_of(leaf)[1:]) for key, leaf in items}

    def fits(e, r):
        return len(e) == len(r) and all(a is None or a == b for a, b in zip(e, r))

    expected = shapes(structure, lambda t: t.shape)
    for sample in samples:
        received = shapes(sample, np.shape)
        if any(not fits(shape, received.get(key, ())) for key, shape in expected.items()):
            expected, received = (expected[None], received[None]) if None in expected else (expected, received)
            raise ValueError(
                f"{what} has inputs of shape {received} per sample, but the student "
                f"'{student.name}' takes {expected}. Pass samples shaped like its input "
                f"(e.g. the training inputs); this is the data, not the converter."
            )


def _converter_cause(error):
    """The converter's one-line reason, out of its MLIR dump."""
    lines = str(error).splitlines()
    unsupported = [line.strip() for line in lines if line.startswith("TF Select ops:")]
    if unsupported:
        return f"unsupported operations, {unsupported[0][len('TF Select ops: '):]}"
    return lines[0][:300] if lines else type(error).__name__


def _input_structure(student):
    """The student's symbolic inputs: one tensor, a dict of them, or `None`.

    `None` for a model without symbolic inputs (subclassed, not built).

    Raises:
        ValueError: for several inputs in a list (the file's inputs are
            matched by name, and a list has none), or dict keys that are not
            the names of their inputs (the file's inputs carry the names).
    """
    inputs = getattr(student, "inputs", None)
    if not inputs:
        return None
    if len(inputs) == 1:
        structure = inputs[0]
        try:
            if isinstance(student.input, dict):
                structure = student.input
        except AttributeError:  # a Sequential that was never called
            pass
        return structure
    structure = student.input
    if not isinstance(structure, dict):
        raise ValueError(
            f"export_student() matches inputs to the exported file by name, but "
            f"'{student.name}' takes a list of {len(inputs)} inputs. Build it with a "
            f"dict of inputs, {{name: keras.Input(..., name=name)}}, and pass dicts of arrays."
        )
    renamed = {key: tensor.name for key, tensor in structure.items() if key != tensor.name}
    if renamed:
        raise ValueError(
            f"The exported file names its inputs after the keras.Input names, but "
            f"'{student.name}' takes a dict whose keys differ from them ({renamed}). "
            f"Give each Input the name of its key (keras.Input(..., name=key))."
        )
    return structure


def _conform(x, structure, name="the student"):
    """`x` as NumPy arrays of the student's input dtypes, with a batch axis.

    Args:
        x: an array (or tensor) or a dict of them.
        structure: `_input_structure(student)`.
        name: the student's name, for messages.

    Returns:
        An array, or a dict of arrays with the structure's keys.

    Raises:
        ValueError: for a dict where one array is expected or the other way
            round, other keys, or non-whole floats for an integer input.
    """
    if isinstance(structure, dict):
        if not isinstance(x, dict) or set(x) != set(structure):
            received = sorted(x) if isinstance(x, dict) else f"one {type(x).__name__}"
            raise ValueError(
                f"{name} takes a dict of inputs {sorted(structure)}, but received "
                f"{received}. Pass a dict of arrays with those keys."
            )
        return {key: _conform_array(x[key], structure[key], key) for key in structure}
    if isinstance(x, dict):
        raise ValueError(
            f"{name} takes one input, but received a dict with keys {sorted(x)}. "
            f"Pass the input array itself."
        )
    return _conform_array(x, structure, "the input")


def _conform_array(value, tensor, label):
    value = np.asarray(value)
    if tensor is None:
        return value.astype("float32") if value.dtype.kind == "f" else value
    dtype = np.dtype(tensor.dtype)
    if dtype.kind in "iu" and value.dtype.kind == "f" and not np.all(value == np.round(value)):
        raise ValueError(
            f"Input '{label}' is {dtype.name} (e.g. token ids), but received "
            f"{value.dtype.name} values that are not whole numbers. Pass the ids "
            f"themselves (an integer array)."
        )
    value = value.astype(dtype)
    if value.ndim == len(tensor.shape) - 1:
        value = value[None]
    return value


def _unbatched(dataset, structure):
    """Whether a dataset's inputs lack the batch axis the student's have."""
    spec = dataset.element_spec
    if isinstance(spec, tuple):
        spec = spec[0]
    first_spec = next(iter(spec.values())) if isinstance(spec, dict) else spec
    first_input = next(iter(structure.values())) if isinstance(structure, dict) else structure
    return first_input is not None and len(first_spec.shape) == len(first_input.shape) - 1


def _batches(data, student):
    """`(x, y, sample_weight)` NumPy batches (`y`, `sample_weight` possibly None).

    Args:
        data: an array or dict of arrays (inputs only), an `(x, y)` or
            `(x, y, sample_weight)` tuple, a `tf.data.Dataset` of inputs or
            of such tuples (batched or not), or a generator (or a function
            returning one) of input batches.
        student: the Keras model the inputs are for.

    Yields:
        `(x, y, sample_weight)` with `x` conformed to the student's inputs.
    """
    structure = _input_structure(student)
    if isinstance(data, (np.ndarray, dict, tf.Tensor)):
        source = [data]
    elif isinstance(data, tuple):
        source = [data]
    elif isinstance(data, tf.data.Dataset):
        if _unbatched(data, structure):
            data = data.batch(256)
        source = data.as_numpy_iterator()
    else:
        source = data() if callable(data) else data
    for element in source:
        columns = tuple(element) if isinstance(element, (tuple, list)) else (element,)
        x, y, sample_weight = (columns + (None, None))[:3]
        yield _conform(x, structure, f"'{student.name}'"), y, sample_weight


def _samples(data, student, limit=REPRESENTATIVE_SAMPLES):
    """Single-sample input batches (arrays or dicts) from any input data."""
    count = 0
    for x, _, _ in _batches(data, student):
        for i in range(len(_first(x))):
            yield keras.tree.map_structure(lambda a, i=i: a[i:i + 1], x)
            count += 1
            if count >= limit:
                return


def _first(x):
    return next(iter(x.values())) if isinstance(x, dict) else x


def _stack(samples):
    return keras.tree.map_structure(lambda *parts: np.concatenate(parts), *samples)


def _weights(x, sample_weight, output):
    """Per-sample (or per-token) weights of the comparison; see `parity_report`."""
    shape = output.shape[:-1]
    mask = lm.token_mask(x, sample_weight, output)  # the Distiller's rule for real tokens
    weights = mask if mask is not None else sample_weight
    if weights is None:
        return np.ones(shape, "float32")
    weights = np.asarray(weights, "float32")
    if weights.size != np.prod(shape):
        raise ValueError(
            f"sample_weight of shape {weights.shape} does not fit outputs of shape "
            f"{output.shape}: expected one weight per {'token' if len(shape) > 1 else 'sample'}, "
            f"shape {shape}."
        )
    return weights.reshape(shape)


def _compare(predict, student, data, step=None):
    """Sums of weighted agreement (and correctness with labels) over `data`.

    With an output quantization `step`, also counts the output values that
    differ by at most one step (`within_step` of `values`)."""
    totals = dict.fromkeys(("max_abs_difference", "agreement", "weight", "correct_exported",
                            "correct_keras", "within_step", "values"), 0.0)
    totals["labelled"] = False
    for x, y, sample_weight in _batches(data, student):
        exported = np.asarray(predict(x))
        reference = np.asarray(student.predict(x, batch_size=256, verbose=0))
        weights = _weights(x, sample_weight, reference)
        totals["max_abs_difference"] = max(
            totals["max_abs_difference"], float(np.max(np.abs(exported - reference))))
        if step:
            # A relative margin: float32 outputs of the same int8 value differ by rounding.
            totals["within_step"] += float(np.sum(np.abs(exported - reference) <= step * 1.0001))
            totals["values"] += exported.size
        top1_exported, top1_keras = exported.argmax(-1), reference.argmax(-1)
        totals["agreement"] += float(np.sum(weights * (top1_exported == top1_keras)))
        totals["weight"] += float(np.sum(weights))
        if y is not None:
            labels = np.asarray(y)
            if labels.size != weights.size:
                raise ValueError(
                    f"Labels of shape {labels.shape} do not fit outputs of shape "
                    f"{reference.shape}: expected class ids of shape {reference.shape[:-1]}."
                )
            labels = labels.reshape(weights.shape)
            totals["labelled"] = True
            totals["correct_exported"] += float(np.sum(weights * (top1_exported == labels)))
            totals["correct_keras"] += float(np.sum(weights * (top1_keras == labels)))
    return totals


def _float_operations(path):
    """`{operation: count}` of the file's operations that compute in float32."""
    Interpreter = _litert_interpreter("keras_kd.export_student")
    counts = collections.Counter(
        name
        for name, inputs, outputs in _keras_compat.litert_operations(Interpreter(model_path=path))
        if name not in _CONVERSIONS and np.float32 in inputs + outputs
    )
    return dict(sorted(counts.items()))


def _not_integer_only(student, float_operations):
    listed = ", ".join(f"{name} x{count}" for name, count in float_operations.items())
    return (
        f"int8_io=True asks for a file an integer-only accelerator can run, but the "
        f"TFLite converter left operations of '{student.name}' in float32 ({listed}); "
        f"nothing was written. Use int8_io=False: int8 weights and activations with "
        f"float32 outputs, the float32 operations running on the CPU."
    )


def _litert_interpreter(feature):
    """The LiteRT `Interpreter` class, or one line naming the 'export' extra."""
    return _extras.require("ai_edge_litert.interpreter", feature, "export").Interpreter


def _litert_predictor(path):
    Interpreter = _litert_interpreter("keras_kd.export.load_predictor")
    interpreter = Interpreter(model_path=path)
    runner = interpreter.get_signature_runner()
    inputs = runner.get_input_details()
    (output_name, output_detail), *others = runner.get_output_details().items()
    if others:
        raise ValueError(
            f"{path} has {1 + len(others)} outputs; the parity report compares "
            f"one. Export a student with a single output."
        )

    def named(x):
        if not isinstance(x, dict):
            if len(inputs) != 1:
                raise ValueError(f"{path} takes inputs {sorted(inputs)}: pass a dict of arrays.")
            return {next(iter(inputs)): x}
        if set(x) != set(inputs):
            raise ValueError(
                f"{path} takes inputs {sorted(inputs)}, but received {sorted(x)}. "
                f"Pass a dict of arrays keyed by those names."
            )
        return x

    def feed(value, detail):
        scale, zero_point = detail["quantization"]
        if detail["dtype"] == np.int8 and scale:
            return np.round(value / scale + zero_point).astype(np.int8)
        return value.astype(detail["dtype"])

    def predict(x):
        feeds = named(x)
        outputs = []
        for i in range(len(_first(feeds))):
            out = runner(**{key: feed(value[i:i + 1], inputs[key]) for key, value in feeds.items()})
            out = out[output_name]
            scale, zero_point = output_detail["quantization"]
            if output_detail["dtype"] != np.float32:
                out = (out.astype("float32") - zero_point) * scale
            outputs.append(out[0])
        return np.stack(outputs).astype("float32")

    return predict


def _size(path):
    if os.path.isdir(path):
        return sum(
            os.path.getsize(os.path.join(root, name))
            for root, _, names in os.walk(path)
            for name in names
        )
    return os.path.getsize(path)


def save_for_inference(model, path, force=False):
    """Saves a model's architecture and weights only, without the optimizer
    state a compiled model would carry (`clone_model` keeps it compiled).

    Args:
        model: the model.
        path: the `.keras` file, written atomically.
        force: replace an existing file (else `ValueError`).
    """
    copy = type(model).from_config(model.get_config())
    copy.set_weights(model.get_weights())
    with atomic_path(path, force) as partial:
        copy.save(partial)


def _keras_size(model):
    """Bytes of the model's `.keras` file (architecture and weights)."""
    with tempfile.TemporaryDirectory() as folder:
        file = os.path.join(folder, "model.keras")
        save_for_inference(model, file)
        return os.path.getsize(file)


__all__ = [
    "QUANTIZATIONS",
    "check_arguments",
    "check_sample_shapes",
    "export_student",
    "format_of",
    "format_report",
    "load_predictor",
    "parity_report",
    "save_for_inference",
]
