"""Student-only export (.keras, SavedModel, .tflite) with a parity report."""

import os
import tempfile

import keras
import numpy as np
import tensorflow as tf

from keras_kd._files import atomic_path, check_destination

QUANTIZATIONS = (None, "float16", "dynamic", "int8")
REPRESENTATIVE_SAMPLES = 200


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
    """Writes the student alone and reports how close the file is to it.

    Args:
        distiller_or_model: a `keras_kd.Distiller` (its `student` is
            exported, never the teacher or connectors) or a Keras model.
        path: where to write: `*.keras`, `*.tflite`, or any other path for a
            SavedModel folder.
        quantization: for `.tflite` only: `None` (float32), `"float16"`,
            `"dynamic"` (dynamic-range int8 weights) or `"int8"` (full
            integer, calibrated on `representative_data`).
        representative_data: inputs for int8 calibration: a `tf.data.Dataset`
            (of inputs or `(x, y)`, batched or not), a NumPy array or a
            generator of input batches. Up to 200 samples are used.
        sample_inputs: inputs to compare the exported model with the Keras
            student on; defaults to the inputs of `evaluation_data`, else of
            `representative_data`.
        evaluation_data: `(x, y)` NumPy arrays with class-id labels: the
            report then has the accuracy of both.
        int8_io: with `"int8"`, make the model's inputs and outputs int8 too
            (for integer-only accelerators); they are float32 otherwise.
        force: replace an existing file or folder at `path`. The file is
            written beside `path` and renamed onto it, so an interrupted
            export never leaves a truncated file.

    Returns:
        A dict: `path`, `format`, `quantization`, `bytes`,
        `size_ratio_to_keras_student`, `size_ratio_to_teacher` (when a
        Distiller was given), and with sample inputs `max_abs_difference`,
        `top1_agreement`, and with evaluation data `accuracy_exported`,
        `accuracy_keras`.

    Raises:
        ValueError: for an unknown quantization, a quantization requested for
            a non-`.tflite` path, `"int8"` without representative data, or a
            `path` that exists (without `force`) or cannot be written; all
            checked before the conversion.
        RuntimeError: if the converter cannot lower the student.

    Example:

    ```python
    report = keras_kd.export_student(distiller, "student.tflite",
                                     quantization="int8",
                                     representative_data=x_train,
                                     evaluation_data=(x_test, y_test))
    ```
    """
    student, teacher = _student_and_teacher(distiller_or_model)
    path = os.fspath(path)
    kind = _format_of(path)
    _check_arguments(kind, quantization, representative_data)
    check_destination(path, force, "Export", "folder" if kind == "saved_model" else "file")

    with atomic_path(path, force) as partial:
        if kind == "keras":
            student.save(partial)
        elif kind == "saved_model":
            student.export(partial, format="tf_saved_model", verbose=False)
        else:
            _write_tflite(student, partial, quantization, representative_data, int8_io)

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

    if sample_inputs is None:
        if evaluation_data is not None:
            sample_inputs = evaluation_data[0]
        elif representative_data is not None:
            sample_inputs = np.concatenate(list(_samples(representative_data, student)))
    if sample_inputs is not None:
        sample_inputs = np.asarray(sample_inputs, "float32")
        exported = load_predictor(path)(sample_inputs)
        reference = student.predict(sample_inputs, batch_size=256, verbose=0)
        report["max_abs_difference"] = float(np.max(np.abs(exported - reference)))
        report["top1_agreement"] = float(
            np.mean(exported.argmax(-1) == reference.argmax(-1))
        )
        if evaluation_data is not None:
            labels = np.asarray(evaluation_data[1]).reshape(-1)
            report["accuracy_exported"] = float(np.mean(exported.argmax(-1) == labels))
            report["accuracy_keras"] = float(np.mean(reference.argmax(-1) == labels))
    return report


def load_predictor(path):
    """A NumPy function `x -> outputs` for an exported student file.

    `.tflite` files run in the LiteRT interpreter (`ai-edge-litert`), one
    sample at a time, with int8 inputs/outputs (de)quantized as the file says.

    Args:
        path: a file written by `export_student`.

    Returns:
        A function from a float32 batch to a float32 NumPy array.
    """
    kind = _format_of(os.fspath(path))
    if kind == "keras":
        model = keras.models.load_model(path)
        return lambda x: model.predict(x, batch_size=256, verbose=0)
    if kind == "saved_model":
        loaded = tf.saved_model.load(path)  # keep it alive: it owns the variables
        return lambda x: np.asarray(loaded.serve(tf.constant(x, "float32")))
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
    }
    rows = []
    for key, label in labels.items():
        if key not in report:
            continue
        value = report[key]
        if key in ("top1_agreement", "accuracy_exported", "accuracy_keras"):
            value = f"{100 * value:.1f}%"
        elif key.startswith("size_ratio"):
            value = f"{value:.3f}"
        elif key == "max_abs_difference":
            value = f"{value:.2e}"
        elif key == "bytes":
            value = f"{value:,}"
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


def _format_of(path):
    if path.endswith(".keras"):
        return "keras"
    if path.endswith(".tflite"):
        return "tflite"
    return "saved_model"


def _check_arguments(kind, quantization, representative_data):
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
    if quantization == "int8" and representative_data is None:
        raise ValueError(
            "quantization='int8' calibrates activation ranges on sample "
            "inputs, but representative_data is None. Pass "
            "representative_data= a few hundred training inputs (a NumPy "
            "array, a tf.data.Dataset or a generator), or use "
            "quantization='dynamic', which needs none."
        )


def _write_tflite(student, path, quantization, representative_data, int8_io):
    options = {}
    if quantization is not None:
        options["optimizations"] = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        options["target_spec"] = {"supported_types": [tf.float16]}
    if quantization == "int8":
        samples = list(_samples(representative_data, student))
        options["representative_dataset"] = lambda: ([s] for s in samples)
        options["target_spec"] = {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]}
        if int8_io:
            options["inference_input_type"] = tf.int8
            options["inference_output_type"] = tf.int8
    try:
        student.export(path, format="litert", verbose=False, **options)
    except Exception as error:  # noqa: BLE001 - the converter raises many kinds
        raise RuntimeError(
            f"The TFLite converter could not lower the student "
            f"'{student.name}' with quantization={quantization!r} "
            f"({_converter_cause(error)}). Try quantization=None or "
            f"'dynamic' (no integer-only kernels needed), or replace the "
            f"layer the converter names with TFLite-supported operations."
        ) from error


def _converter_cause(error):
    """The converter's one-line reason, out of its MLIR dump."""
    lines = str(error).splitlines()
    unsupported = [line.strip() for line in lines if line.startswith("TF Select ops:")]
    if unsupported:
        return f"unsupported operations, {unsupported[0][len('TF Select ops: '):]}"
    return lines[0][:300] if lines else type(error).__name__


def _samples(data, student, limit=REPRESENTATIVE_SAMPLES):
    """Single-sample float32 input batches from an array, dataset or generator."""
    rank = len(student.inputs[0].shape) if student.inputs else None
    if isinstance(data, np.ndarray):
        source = [data]
    elif isinstance(data, tf.data.Dataset):
        source = data.as_numpy_iterator()
    else:
        source = data() if callable(data) else data
    count = 0
    for element in source:
        if isinstance(element, (tuple, list)):
            element = element[0]
        element = np.asarray(element, "float32")
        if rank is not None and element.ndim == rank - 1:
            element = element[None]
        for sample in element:
            yield sample[None]
            count += 1
            if count >= limit:
                return


def _litert_predictor(path):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path)
    interpreter.allocate_tensors()
    input_detail = interpreter.get_input_details()[0]
    output_detail = interpreter.get_output_details()[0]

    def predict(x):
        outputs = []
        for sample in np.asarray(x, "float32"):
            value = sample[None]
            scale, zero_point = input_detail["quantization"]
            if input_detail["dtype"] != np.float32:
                value = np.round(value / scale + zero_point).astype(input_detail["dtype"])
            interpreter.set_tensor(input_detail["index"], value)
            interpreter.invoke()
            out = interpreter.get_tensor(output_detail["index"])
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


def save_for_inference(model, path):
    """Saves a model's architecture and weights only, without the optimizer
    state a compiled model would carry (`clone_model` keeps it compiled)."""
    copy = type(model).from_config(model.get_config())
    copy.set_weights(model.get_weights())
    copy.save(path)


def _keras_size(model):
    """Bytes of the model's `.keras` file (architecture and weights)."""
    with tempfile.TemporaryDirectory() as folder:
        file = os.path.join(folder, "model.keras")
        save_for_inference(model, file)
        return os.path.getsize(file)
