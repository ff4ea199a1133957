"""The `keras-kd` command."""

import argparse
import os
import sys


DATA_SPECS = "mnist1d, digits, npz:PATH or tfds:NAME[:SPLIT]"
FEATURE_LOSSES = {
    "mse": "mse",
    "hint": "Hint",
    "cosine": "CosineDistance",
    "attention": "AttentionTransfer",
    "similarity": "SimilarityPreserving",
    "rkd_distance": "RKDDistance",
    "rkd_angle": "RKDAngle",
    "pkt": "PKT",
}


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except `None` (no default)."""

    def _get_help_string(self, action):
        if action.default is None or action.required:
            return action.help
        return super()._get_help_string(action)


def build_parser():
    """The argument parser of `keras-kd` and its subcommands."""
    parser = argparse.ArgumentParser(
        prog="keras-kd",
        description="Knowledge distillation for Keras 3 on TensorFlow.",
        formatter_class=_HelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo",
        help="train a teacher, a student from labels and a distilled "
        "student on MNIST-1D, and compare them",
        formatter_class=_HelpFormatter,
    )
    demo.add_argument(
        "--output", default="kd_output",
        help="folder for the models, TensorBoard logs and student files",
    )
    demo.add_argument(
        "--quick", action="store_true",
        help="a short run on a subset (well under a minute)",
    )
    demo.add_argument(
        "--epochs", type=int, default=None,
        help="epochs per model (default: the recipe's, or 3 with --quick)",
    )
    demo.add_argument("--seed", type=int, default=0, help="random seed")

    export = commands.add_parser(
        "export",
        help="export a saved student to .tflite/.keras/SavedModel and report "
        "its size and parity",
        formatter_class=_HelpFormatter,
    )
    export.add_argument("student", help="the student's .keras file (or a Distiller's)")
    export.add_argument("output", help="OUT.tflite, OUT.keras or a SavedModel folder")
    export.add_argument(
        "--quantization", choices=["none", "float16", "dynamic", "int8"],
        default="none", help="TFLite quantization",
    )
    export.add_argument(
        "--representative-data", default=None, metavar="SPEC",
        help="data for int8 calibration and the parity report: "
        "mnist1d, digits, npz:PATH (or a plain .npz path) or tfds:NAME[:SPLIT]",
    )
    export.add_argument(
        "--int8-io", action="store_true",
        help="with int8: integer inputs and outputs too",
    )

    distill = commands.add_parser(
        "distill",
        help="distil a saved teacher into a saved student",
        formatter_class=_HelpFormatter,
    )
    distill.add_argument("--teacher", required=True, help="the teacher's .keras file")
    distill.add_argument("--student", required=True, help="the student's .keras file")
    distill.add_argument("--data", required=True, metavar="SPEC", help=f"training data: {DATA_SPECS}")
    distill.add_argument(
        "--val-data", default=None, metavar="SPEC",
        help="validation data (default: the test/validation split of --data)",
    )
    distill.add_argument("--epochs", type=int, default=10, help="training epochs")
    distill.add_argument("--batch-size", type=int, default=64, help="batch size")
    distill.add_argument("--learning-rate", type=float, default=1e-3, help="Adam's learning rate")
    distill.add_argument("--temperature", type=float, default=4.0, help="logit distillation temperature")
    distill.add_argument(
        "--student-loss-weight", type=float, default=0.1,
        help="weight of the hard-label loss, in [0, 1]",
    )
    distill.add_argument(
        "--feature", action="append", default=[], metavar="TEACHER_LAYER:STUDENT_LAYER[:LOSS]",
        help="also distil a feature pair (repeatable); layer paths may be "
        "'parent/child'; LOSS is one of " + ", ".join(FEATURE_LOSSES) + " (default mse); "
        "a learnable connector is added where shapes differ",
    )
    distill.add_argument(
        "--config", default=None, metavar="JSON",
        help="losses and weights as JSON (see examples/configs/), replacing "
        "--temperature, --student-loss-weight and --feature",
    )
    distill.add_argument(
        "--cache-teacher", action="store_true",
        help="run the teacher once over the data and train on its cached outputs",
    )
    distill.add_argument("--logdir", default=None, help="TensorBoard log folder")
    distill.add_argument("--output", default="kd_student", help="folder for student.keras")
    distill.add_argument(
        "--export-tflite", choices=["float32", "float16", "dynamic", "int8"], default=None,
        help="also write student.tflite with this quantization",
    )
    distill.add_argument("--seed", type=int, default=0, help="random seed")
    return parser


class UsageError(Exception):
    """Bad input: reported in one line, without a traceback."""


def main(argv=None):
    """Entry point of `keras-kd`; returns the process exit code."""
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        if args.command == "demo":
            from keras_kd import demo

            demo.run(
                output=args.output, quick=args.quick, epochs=args.epochs,
                seed=args.seed,
            )
        elif args.command == "export":
            run_export(args)
        elif args.command == "distill":
            run_distill(args)
    except (UsageError, ValueError, RuntimeError) as error:
        message = str(error).strip().splitlines()[0]
        print(f"keras-kd {args.command}: error: {message}", file=sys.stderr)
        return 2
    return 0


def load_model_file(path, what):
    """Loads a `.keras` file, or raises UsageError saying what is wrong."""
    if not os.path.exists(path):
        raise UsageError(f"{what} file '{path}' does not exist.")
    import keras

    import keras_kd  # noqa: F401 - registers keras_kd classes for loading

    try:
        return keras.models.load_model(path)
    except Exception as error:  # noqa: BLE001 - any failure means "not a model"
        raise UsageError(
            f"{what} file '{path}' is not a Keras model ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}). Pass a file "
            f"written by model.save('name.keras')."
        ) from error


def load_data_spec(spec):
    """`keras_kd.datasets.load`, also accepting a plain `.npz` path."""
    from keras_kd import datasets

    if spec.endswith(".npz") and not spec.startswith("npz:"):
        spec = f"npz:{spec}"
    return datasets.load(spec)


def run_export(args):
    """`keras-kd export`: write the student and print the parity report."""
    from keras_kd import export

    student = load_model_file(args.student, "Student")
    quantization = None if args.quantization == "none" else args.quantization
    representative, evaluation = None, None
    if args.representative_data:
        (x, y), (x_val, y_val) = load_data_spec(args.representative_data)
        representative = x
        if x_val is not None and y_val is not None:
            evaluation = (x_val, y_val)
        elif y is not None:
            evaluation = (x, y)
    report = export.export_student(
        student, args.output, quantization=quantization,
        representative_data=representative, evaluation_data=evaluation,
        int8_io=args.int8_io,
    )
    print(export.format_report(report))


if __name__ == "__main__":
    sys.exit(main())


def distillation_arguments(args):
    """The Distiller's loss arguments, from --config or from the flags."""
    import keras

    import keras_kd

    if args.config:
        flags = [f"--{name}" for name, changed in (
            ("temperature", args.temperature != 4.0),
            ("student-loss-weight", args.student_loss_weight != 0.1),
            ("feature", bool(args.feature)),
        ) if changed]
        if flags:
            raise UsageError(f"--config replaces {', '.join(flags)}; pass one or the other.")
        if not os.path.exists(args.config):
            raise UsageError(f"Config file '{args.config}' does not exist.")
        import json

        with open(args.config) as file:
            try:
                config = json.load(file)
            except json.JSONDecodeError as error:
                raise UsageError(f"Config file '{args.config}' is not JSON: {error}.") from error
        unknown = set(config) - {"distillation_losses", "distillation_loss_weights", "student_loss_weight"}
        if unknown or "distillation_losses" not in config:
            raise UsageError(
                f"Config file '{args.config}' must hold 'distillation_losses' and optionally "
                f"'distillation_loss_weights' and 'student_loss_weight'; it has {sorted(config)}."
            )
        losses = [keras.saving.deserialize_keras_object(c) for c in config["distillation_losses"]]
        return {
            "distillation_losses": losses,
            "distillation_loss_weights": config.get("distillation_loss_weights"),
            "student_loss_weight": config.get("student_loss_weight", 0.5),
        }
    losses = [keras_kd.LogitsDistillation(temperature=args.temperature)]
    for spec in args.feature:
        parts = spec.split(":")
        if len(parts) not in (2, 3) or not all(parts):
            raise UsageError(
                f"--feature '{spec}' is not TEACHER_LAYER:STUDENT_LAYER[:LOSS], e.g. "
                f"--feature conv2:conv1:mse."
            )
        name = parts[2] if len(parts) == 3 else "mse"
        if name not in FEATURE_LOSSES:
            raise UsageError(f"Unknown feature loss '{name}' in --feature '{spec}'. Use one of: "
                             f"{', '.join(FEATURE_LOSSES)}.")
        loss = FEATURE_LOSSES[name]
        loss = loss if loss == "mse" else getattr(keras_kd.losses, loss)()
        losses.append(keras_kd.FeatureDistillation(
            loss=loss, teacher_layer_name=parts[0], student_layer_name=parts[1], projection="auto"))
    return {"distillation_losses": losses, "student_loss_weight": args.student_loss_weight}


def check_data_fits(x, y, model, spec):
    """Raises UsageError when the data's inputs or labels do not fit the model."""
    expected = tuple(model.inputs[0].shape[1:]) if model.inputs else None
    if expected is not None and any(
        e is not None and e != g for e, g in zip(expected, x.shape[1:])
    ) or (expected is not None and len(expected) != x.ndim - 1):
        raise UsageError(
            f"Data '{spec}' has inputs of shape {x.shape[1:]}, but the models take "
            f"{expected}. Pass data shaped like the models' input."
        )
    classes = model.outputs[0].shape[-1] if model.outputs else None
    if y is not None and classes is not None and int(y.max()) >= classes:
        raise UsageError(
            f"Data '{spec}' has labels up to {int(y.max())} ({int(y.max()) + 1} classes), "
            f"but the models output {classes} classes. Pass data with labels 0..{classes - 1}."
        )


def run_distill(args):
    """`keras-kd distill`: train the student from the teacher and save it."""
    import keras
    import tensorflow as tf

    import keras_kd
    from keras_kd import export, taps

    keras.utils.set_random_seed(args.seed)
    teacher = load_model_file(args.teacher, "Teacher")
    student = load_model_file(args.student, "Student")
    (x, y), (x_val, y_val) = load_data_spec(args.data)
    if args.val_data:
        (x_val, y_val), _ = load_data_spec(args.val_data)
    check_data_fits(x, y, student, args.data)
    if x_val is not None:
        check_data_fits(x_val, y_val, student, args.val_data or args.data)

    distiller = keras_kd.Distiller(teacher, student, **distillation_arguments(args))
    has_labels = y is not None
    if not has_labels and float(distiller.student_loss_weight) > 0:
        raise UsageError(f"Data '{args.data}' has no labels; pass --student-loss-weight 0.")
    distiller.compile(
        optimizer=keras.optimizers.Adam(args.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(
            from_logits=not taps.ends_with_softmax(student)) if has_labels else None,
        metrics=["accuracy"] if has_labels else None,
    )
    parts = (x, y) if has_labels else (x,)
    train = tf.data.Dataset.from_tensor_slices(parts)
    if args.cache_teacher:
        train = keras_kd.cache_teacher_outputs(distiller, train, batch_size=args.batch_size, seed=args.seed)
    else:
        train = train.shuffle(len(x), seed=args.seed).batch(args.batch_size)
    validation = (x_val, y_val) if x_val is not None and y_val is not None else None
    callbacks = [keras.callbacks.TensorBoard(args.logdir)] if args.logdir else []
    distiller.fit(train, validation_data=validation, epochs=args.epochs, callbacks=callbacks, verbose=2)

    os.makedirs(args.output, exist_ok=True)
    student_path = os.path.join(args.output, "student.keras")
    student.save(student_path)
    print(f"Wrote {student_path}")
    if args.export_tflite:
        quantization = None if args.export_tflite == "float32" else args.export_tflite
        report = export.export_student(
            distiller, os.path.join(args.output, "student.tflite"), quantization=quantization,
            representative_data=x, evaluation_data=validation,
        )
        print(export.format_report(report))
