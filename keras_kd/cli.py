"""The `keras-kd` command."""

import argparse
import os
import sys


def build_parser():
    """The argument parser of `keras-kd` and its subcommands."""
    parser = argparse.ArgumentParser(
        prog="keras-kd",
        description="Knowledge distillation for Keras 3 on TensorFlow.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo",
        help="train a teacher, a student from labels and a distilled "
        "student on MNIST-1D, and compare them",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
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
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
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
