"""The `keras-kd` command: its arguments, its one-line errors, `export` and `plan`.

Every bad input ends in one line on stderr, `keras-kd <command>: error: ...`,
and exit code 2 (`--traceback` shows the full error instead). Numbers are
checked while the arguments are parsed, output locations before any model is
loaded, data before any training.
"""

import argparse
import json
import math
import os
import shutil
import sys

import numpy as np

from keras_kd import losses
from keras_kd._extras import MissingExtraError
from keras_kd._files import WriteFailed, atomic_path, check_destination
from keras_kd._version import __version__
from keras_kd.app import datasets

TEMPERATURE = 4.0
STUDENT_LOSS_WEIGHT = 0.1
FEATURE_LOSSES = ("mse",) + tuple(losses.FEATURE_LOSSES)
"""--feature loss names: Keras's mse (FitNets' hint) and the feature losses of
keras_kd's one name table, `keras_kd.losses.LOSSES`."""
CONFIG_CLASSES = tuple(sorted(cls.__name__ for cls in losses.LOSSES.values()
                              if issubclass(cls, losses.DistillationLoss)))
"""--config `class_name`s: the distillation-loss classes of `keras_kd.losses.LOSSES`."""


class UsageError(Exception):
    """Bad input: reported in one line, without a traceback."""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (not the whole usage)."""

    def error(self, message):
        """Prints `message` and a pointer to `--help`; exits with code 2."""
        self.exit(2, f"{self.prog}: error: {message.rstrip('.')}. See '{self.prog} --help'.\n")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except `None` (no default) and those of flags."""

    def _get_help_string(self, action):
        # A flag (no value) says what it does; "(default: True)" under
        # --no-calibration would read as the opposite.
        if action.default in (None, argparse.SUPPRESS) or action.required or action.nargs == 0:
            return action.help
        return super()._get_help_string(action)


# ------------------------------------------------------- numbers on the command line


def _whole_number(text):
    """`text` as an int, or `None` if it is not a whole number."""
    try:
        return int(text)
    except ValueError:
        return None


def count(text):
    """An argparse type: a whole number >= 1 (epochs, batch size).

    Raises:
        argparse.ArgumentTypeError: for anything else.
    """
    value = _whole_number(text)
    if value is None or value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, received {text!r}")
    if value >= 2**31:  # TensorFlow counts steps in int32/int64: fail here, not mid-run
        raise argparse.ArgumentTypeError(f"expected a whole number below 2**31, received {text!r}")
    return value


def seed(text):
    """An argparse type: a random seed, a whole number from 0 to 2**32 - 1.

    Raises:
        argparse.ArgumentTypeError: for anything else.
    """
    value = _whole_number(text)
    if value is None or not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(
            f"expected a whole number from 0 to {2**32 - 1} (a random seed), received {text!r}")
    return value


def positive(text):
    """An argparse type: a finite number > 0 (temperature, learning rate).

    Raises:
        argparse.ArgumentTypeError: for anything else, `inf` and `nan` included.
    """
    value = _float(text)
    if value is None or not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, received {text!r}")
    return value


def fraction(text):
    """An argparse type: a finite number in [0, 1] (a loss weight).

    Raises:
        argparse.ArgumentTypeError: for anything else.
    """
    value = _float(text)
    if value is None or not 0.0 <= value <= 1.0:  # NaN fails both comparisons
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], received {text!r}")
    return value


def _float(text):
    try:
        return float(text)
    except ValueError:
        return None


# ------------------------------------------------------------------------ parser


def build_parser():
    """The argument parser of `keras-kd` and its subcommands.

    Returns:
        An `argparse.ArgumentParser`.
    """
    parser = _Parser(
        prog="keras-kd",
        description="Knowledge distillation for Keras 3 on TensorFlow.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"keras-kd {__version__}")
    traceback_help = "on an error, show the full Python traceback, not one line"
    parser.add_argument("--traceback", action="store_true", help=traceback_help)
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name, help):
        sub = commands.add_parser(name, help=help, formatter_class=_HelpFormatter)
        # Also accepted after the command; SUPPRESS keeps the top-level value.
        sub.add_argument("--traceback", action="store_true", default=argparse.SUPPRESS,
                         help=traceback_help)
        return sub

    demo = command(
        "demo",
        "train a teacher, a student from labels, distilled students and a yardstick, and compare "
        "them: on MNIST-1D (classification) or on the standard library's docstrings (lm)",
    )
    demo.add_argument(
        "task", nargs="?", choices=("classification", "lm"), default="classification",
        help="classification: 1-D CNNs on MNIST-1D, a teacher from 40,000 other labelled samples, "
        "3,600 labelled + 36,400 unlabelled inputs; accuracy, latency, calibration, an int8 student; "
        "lm: GPT-2-style byte-level language models (KerasHub), held-out bits per byte",
    )
    demo.add_argument(
        "--output", default=None,
        help="folder for the models, TensorBoard logs and student files; for lm, "
        "kd_output_lm, or kd_output_lm_quick with --quick "
        "(default: kd_output, or kd_output_quick with --quick)",
    )
    demo.add_argument(
        "--quick", action="store_true",
        help="a short run on a subset (well under a minute): a smoke test, not results",
    )
    demo.add_argument(
        "--epochs", type=count, default=None,
        help="epochs of 57 steps per model, classification only (default: 300, or 3 with --quick)",
    )
    demo.add_argument(
        "--no-calibration", dest="calibration", action="store_false",
        help="classification only: keep keras_kd's student as trained, without the temperature "
        "fitted on the validation split (keras_kd.calibrate)",
    )
    demo.add_argument("--seed", type=seed, default=0, help="random seed")
    demo.add_argument(
        "--all-rows", action="store_true",
        help="lm only: add keras_kd from top-16 and top-64 teacher caches, from 16- and 64-draw "
        "caches, sequence-level and on-policy (lambda 0.5) rows (about 20 more minutes on 2 cores)",
    )
    demo.add_argument("--force", action="store_true",
                      help="replace the models and report of a previous demo in --output")

    export = command(
        "export",
        "export a saved student to .tflite/.keras/SavedModel and report its size and parity",
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
        f"{datasets.SPECS} (or a plain .npz path)",
    )
    export.add_argument(
        "--int8-io", action="store_true",
        help="with int8: integer inputs and outputs too",
    )
    export.add_argument("--force", action="store_true", help="replace an existing output")

    plan = command(
        "plan",
        "propose teacher/student feature pairs, stage by stage, from the two models' graphs "
        "and print them as a table (nothing is run or written)",
    )
    plan.add_argument("--teacher", required=True, help="the teacher's .keras file")
    plan.add_argument("--student", required=True, help="the student's .keras file")

    distill = command("distill", "distil a saved teacher into a saved student")
    distill.add_argument("--teacher", required=True, help="the teacher's .keras file")
    distill.add_argument("--student", required=True, help="the student's .keras file")
    distill.add_argument("--data", required=True, metavar="SPEC",
                         help=f"training data: {datasets.SPECS}")
    distill.add_argument(
        "--val-data", default=None, metavar="SPEC",
        help="validation data (default: the test/validation split of --data)",
    )
    distill.add_argument("--epochs", type=count, default=10, help="training epochs")
    distill.add_argument("--batch-size", type=count, default=64, help="batch size")
    distill.add_argument("--learning-rate", type=positive, default=1e-3, help="Adam's learning rate")
    distill.add_argument("--temperature", type=positive, default=TEMPERATURE,
                         help="logit distillation temperature")
    distill.add_argument(
        "--student-loss-weight", type=fraction, default=STUDENT_LOSS_WEIGHT,
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
    distill.add_argument(
        "--output", default="kd_student",
        help="folder for student.keras (and student.tflite); while training it also "
        "holds backup/, the last finished epoch, removed once the student is written",
    )
    distill.add_argument(
        "--export-tflite", choices=["float32", "float16", "dynamic", "int8"], default=None,
        help="also write student.tflite with this quantization",
    )
    distill.add_argument(
        "--resume", action="store_true",
        help="continue an interrupted run from its last finished epoch (same arguments)",
    )
    distill.add_argument(
        "--force", action="store_true",
        help="replace student.keras/student.tflite of a previous run in --output, "
        "and discard an interrupted run's backup unless --resume",
    )
    distill.add_argument(
        "--quantization-aware", action="store_true",
        help="train the student through simulated int8 LiteRT arithmetic "
        "(keras_kd.quantization_aware); its int8 export needs no calibration data",
    )
    distill.add_argument("--seed", type=seed, default=0, help="random seed")
    return parser


# -------------------------------------------------------------------------- main


def main(argv=None):
    """Entry point of `keras-kd`.

    Args:
        argv: the arguments; defaults to the process's.

    Returns:
        The exit code: 0, 2 for an error (one line on stderr), 130 when
        interrupted.
    """
    args = build_parser().parse_args(argv)
    try:
        if args.command == "demo" and args.task == "lm":
            from keras_kd.app import demo_lm

            if args.epochs is not None:
                raise UsageError(
                    f"--epochs is the classification demo's; `keras-kd demo lm` trains the teacher "
                    f"{demo_lm.DEMO_TEACHER_EPOCHS} epochs and every student {demo_lm.STUDENT_EPOCHS} "
                    f"({demo_lm.QUICK_EPOCHS} with --quick)")
            if not args.calibration:
                raise UsageError("--no-calibration is the classification demo's: `keras-kd demo lm` "
                                 "calibrates no model. Leave it out.")
            demo_lm.run(output=args.output, quick=args.quick, seed=args.seed, all_rows=args.all_rows,
                        force=args.force)
        elif args.command == "demo":
            from keras_kd.app import demo

            if args.all_rows:
                raise UsageError("--all-rows is the lm demo's: keras-kd demo lm --all-rows")

            demo.run(output=args.output, quick=args.quick, epochs=args.epochs, seed=args.seed,
                     force=args.force, calibration=args.calibration)
        elif args.command == "export":
            run_export(args)
        elif args.command == "plan":
            run_plan(args)
        else:
            run_distill(args)
    except KeyboardInterrupt:
        if args.traceback:
            raise
        hint = " Rerun with --resume to continue from the last finished epoch." if (
            args.command == "distill") else ""
        print(f"\nkeras-kd {args.command}: interrupted.{hint}", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - every error becomes one line
        if args.traceback:
            raise
        print(f"keras-kd {args.command}: error: {one_line(error)}", file=sys.stderr)
        return 2
    return 0


def one_line(error):
    """An exception as one line: its message, with its type when unexpected.

    Args:
        error: the exception.

    Returns:
        The message's first line; for errors other than `UsageError`,
        `ValueError` and `WriteFailed` (whose messages are written for
        users), the type name and a pointer to `--traceback` too.
    """
    lines = str(error).strip().splitlines()
    message = lines[0].strip() if lines else ""
    if isinstance(error, (UsageError, ValueError, WriteFailed, MissingExtraError)) and message:
        return message
    return (f"{type(error).__name__}: {message} " if message else f"{type(error).__name__} ") + (
        "(keras-kd --traceback ... shows where it happened)")


# ------------------------------------------------------------------ shared steps


def load_model_file(path, what, allow_distiller=False):
    """Loads a `.keras` file.

    Args:
        path: the file.
        what: `"Teacher"` or `"Student"`, for messages.
        allow_distiller: accept a saved Distiller (export takes its student).

    Returns:
        The `keras.Model`.

    Raises:
        UsageError: if the file is missing, a folder or not a Keras model, or
            holds a Distiller while `allow_distiller` is false.
    """
    if not os.path.exists(path):
        raise UsageError(f"{what} file '{path}' does not exist.")
    if os.path.isdir(path):
        raise UsageError(f"{what} file '{path}' is a folder. Pass a file written by model.save('name.keras').")
    import keras

    from keras_kd import _validation

    try:
        model = keras.models.load_model(path)
    except Exception as error:  # noqa: BLE001 - any failure means "not a model"
        raise UsageError(
            f"{what} file '{path}' is not a Keras model ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}). Pass a file "
            f"written by model.save('name.keras')."
        ) from error
    if not allow_distiller and _validation.is_distiller(model):
        raise UsageError(
            f"{what} file '{path}' holds a saved Distiller, not a trained model: a Distiller carries "
            f"its own teacher and outputs its student's predictions. Pass the student it trained "
            f"(the student.keras keras-kd distill wrote, or distiller.student.save(...)).")
    return model


def load_data_spec(spec):
    """`keras_kd.app.datasets.load`, also accepting a plain `.npz` path.

    Args:
        spec: a data spec (`datasets.SPECS`).

    Returns:
        `((x, y), (x_val, y_val))`.
    """
    if spec.endswith(".npz") and not spec.startswith("npz:"):
        spec = f"npz:{spec}"
    return datasets.load(spec)


def classes_of(model):
    """The size of a model's last output axis (its classes), or `None`."""
    return model.outputs[0].shape[-1] if getattr(model, "outputs", None) else None


# ------------------------------------------------------------------------ export


def run_export(args):
    """`keras-kd export`: write the student and print the parity report.

    Raises:
        UsageError, ValueError: for bad arguments, files or data, before
            the conversion.
    """
    from keras_kd import export
    from keras_kd import quantization as quantization_module

    quantization = None if args.quantization == "none" else args.quantization
    kind = export.format_of(args.output)  # one rule for the suffixes
    student = None
    if quantization == "int8" and not args.representative_data:
        student = load_model_file(args.student, "Student")
        if not quantization_module.is_quantization_aware(student):
            raise UsageError(
                "--quantization int8 calibrates activation ranges on sample inputs: pass "
                "--representative-data SPEC (e.g. the training data), or use --quantization "
                "dynamic, which needs none. (A student trained with keras-kd distill "
                "--quantization-aware needs none either.)")
    export.check_arguments(kind, quantization, args.representative_data,
                            student is not None)
    if args.int8_io and quantization != "int8":
        raise UsageError(f"--int8-io applies to --quantization int8, not {args.quantization}.")
    check_destination(args.output, args.force, "Export", "folder" if kind == "saved_model" else "file")

    student = student or load_model_file(args.student, "Student", allow_distiller=True)
    representative, evaluation = None, None
    if args.representative_data:
        spec = args.representative_data
        (x, y), (x_val, y_val) = load_data_spec(spec)
        x, y = datasets.check(x, y, spec, classes_of(student))
        representative = x
        if x_val is not None and y_val is not None:
            evaluation = datasets.check(x_val, y_val, f"{spec} (validation)", classes_of(student))
        elif y is not None:
            evaluation = (x, y)
    report = export.export_student(
        student, args.output, quantization=quantization,
        representative_data=representative, evaluation_data=evaluation,
        int8_io=args.int8_io, force=args.force,
    )
    print(export.format_report(report))


# -------------------------------------------------------------------------- plan


def run_plan(args):
    """`keras-kd plan`: print the feature pairs `keras_kd.FeaturePlan` proposes,
    then the same pairs as `keras-kd distill --feature` flags.

    Raises:
        UsageError, ValueError: for a missing or unreadable model file, or
            models whose stages cannot be read or paired.
    """
    from keras_kd.plan import FeaturePlan

    teacher = load_model_file(args.teacher, "Teacher")
    student = load_model_file(args.student, "Student")
    plan = FeaturePlan(teacher, student)
    print(plan.table())
    flags = " ".join(f"--feature {p.teacher_layer}:{p.student_layer}" for p in plan.pairs)
    print(f"\nAs keras-kd distill flags (mse, projection='auto'): {flags}")


# ----------------------------------------------------------------------- distill

BACKUP = "backup"
RUN_RECORD = "run.json"
# The arguments a resumed run must share with the interrupted one.
RESUMED_SETTINGS = ("teacher", "student", "data", "val_data", "batch_size", "learning_rate",
                    "temperature", "student_loss_weight", "feature", "config", "cache_teacher",
                    "seed")


def run_distill(args):
    """`keras-kd distill`: train the student from the teacher and save it.

    Checks the outputs, the losses, the data and the models before training;
    trains with `TerminateOnNaN` and `BackupAndRestore` (the backup is in
    `--output`/backup until the student is written); refuses to write a
    student with non-finite weights.

    Raises:
        UsageError, ValueError: for bad arguments, files or data, and for a
            run whose loss or weights became non-finite.
    """
    import keras
    import tensorflow as tf

    import keras_kd
    from keras_kd import export, taps

    outputs = check_distill_outputs(args)
    losses = distillation_arguments(args)
    keras.utils.set_random_seed(args.seed)
    train_spec, val_spec = args.data, args.val_data or f"{args.data} (validation)"
    (x, y), (x_val, y_val) = load_data_spec(args.data)
    if args.val_data:
        (x_val, y_val), _ = load_data_spec(args.val_data)
    teacher = load_model_file(args.teacher, "Teacher")
    student = load_model_file(args.student, "Student")
    contents = run_contents(args, (x, y, x_val, y_val))
    if args.resume:
        check_same_contents(contents, outputs["backup"])
    if args.quantization_aware:
        student = keras_kd.quantization_aware(student)
    check_models(teacher, student, losses["distillation_losses"])
    classes = classes_of(student)
    x, y = datasets.check(x, y, train_spec, classes)
    check_inputs_fit(x, student, train_spec)
    validation = None
    if x_val is not None and y_val is not None:
        validation = datasets.check(x_val, y_val, val_spec, classes)
        check_inputs_fit(validation[0], student, val_spec)

    distiller = keras_kd.Distiller(teacher, student, **losses)
    if y is None and float(distiller.student_loss_weight) > 0:
        raise UsageError(f"Data '{args.data}' has no labels; pass --student-loss-weight 0.")
    distiller.compile(
        optimizer=keras.optimizers.Adam(args.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(
            from_logits=not taps.ends_with_softmax(student)) if y is not None else None,
        metrics=["accuracy"] if y is not None else None,
    )
    columns = (x, y) if y is not None else (x,)
    if args.cache_teacher:
        cached = keras_kd.cache_teacher_outputs(
            distiller, tf.data.Dataset.from_tensor_slices(columns), batch_size=args.batch_size,
            shuffle=False)  # epoch_batches shuffles, resumably
        columns = keras.tree.map_structure(lambda *parts: np.concatenate(parts),
                                           *cached.as_numpy_iterator())
    train, epoch_callback = epoch_batches(columns, args.batch_size, args.seed)

    start_backup(args, outputs["backup"], contents)
    # Each epoch written atomically; removed below, once the student is written.
    backup = keras_kd.callbacks.EpochBackup(outputs["backup"])
    callbacks = [keras.callbacks.TerminateOnNaN(), epoch_callback, backup]
    if args.logdir:
        callbacks.append(keras.callbacks.TensorBoard(args.logdir))
    history = distiller.fit(train, validation_data=validation, epochs=args.epochs,
                            initial_epoch=backup.restore(distiller), callbacks=callbacks,
                            shuffle=False, verbose=2)
    try:
        check_finite(history, student, args)
    except UsageError:
        _remove(outputs["backup"])  # its last epoch is the non-finite one
        raise

    try:
        with atomic_path(outputs["student"], args.force) as partial:
            student.save(partial)
    except OSError as error:
        kept = "the previous student.keras is unchanged; " if os.path.exists(outputs["student"]) else ""
        raise WriteFailed(error.errno, f"Cannot write '{outputs['student']}' ({error.strerror or error}): "
                                       f"{kept}the trained epochs are kept in '{outputs['backup']}'. Free space "
                                       f"and rerun with --resume --force to write the student.") from error
    print(f"Wrote {outputs['student']}")
    _remove(outputs["backup"])  # the run is saved
    if args.export_tflite:
        quantization = None if args.export_tflite == "float32" else args.export_tflite
        report = export.export_student(
            distiller, outputs["tflite"], quantization=quantization,
            representative_data=x, evaluation_data=validation, force=args.force,
        )
        print(export.format_report(report))


def check_distill_outputs(args):
    """Checks every location distill writes to, before anything is loaded.

    Decisions: an existing `--output` folder is fine; a `student.keras` (or,
    with `--export-tflite`, `student.tflite`) of a previous run in it is
    replaced only with `--force`. A `backup/` folder there is an interrupted
    run: continued with `--resume`, discarded with `--force`, else refused.

    Args:
        args: the parsed `distill` arguments.

    Returns:
        `{"student": path, "tflite": path or None, "backup": folder}`.

    Raises:
        ValueError, UsageError: for a location that cannot be written, an
            existing output without `--force`, an interrupted run without
            `--resume`/`--force`, or `--resume` with nothing to resume.
    """
    output = args.output
    check_destination(output, True, "Output folder", "folder")
    if os.path.isdir(output) and not os.access(output, os.W_OK | os.X_OK):
        raise UsageError(f"Output folder '{output}' cannot be written: no write permission. "
                         f"Pass an --output folder you can write to.")
    outputs = {
        "student": os.path.join(output, "student.keras"),
        "tflite": os.path.join(output, "student.tflite") if args.export_tflite else None,
        "backup": os.path.join(output, BACKUP),
    }
    for what, key in (("Student", "student"), ("TFLite student", "tflite")):
        if outputs[key]:
            check_destination(outputs[key], args.force, what, "file")
    backup = outputs["backup"]
    if args.resume and not os.path.isdir(backup):
        raise UsageError(f"--resume: '{output}' holds no interrupted run (no '{BACKUP}' folder). "
                         f"Run without --resume to start training.")
    if os.path.isdir(backup) and not (args.resume or args.force):
        raise UsageError(f"'{output}' holds an interrupted run ('{backup}'). Pass --resume to continue "
                         f"it from its last finished epoch, or --force to discard it and start over.")
    if args.resume:
        check_same_settings(args, backup)
    if args.logdir:
        check_destination(args.logdir, True, "Log folder", "folder")
    return outputs


def settings(args):
    """The arguments a resumed run must share with the interrupted one.

    Returns:
        A JSON-able dict; file paths made absolute.
    """
    values = {name: getattr(args, name) for name in RESUMED_SETTINGS}
    for name in ("teacher", "student", "config"):
        if values[name]:
            values[name] = os.path.abspath(values[name])
    return values


def start_backup(args, backup, contents):
    """Starts a fresh backup folder holding the run's settings and the
    digests of its inputs (`run_contents`), or keeps the one being resumed."""
    if args.resume:
        return
    _remove(backup)
    os.makedirs(backup)
    with atomic_path(os.path.join(backup, RUN_RECORD)) as partial, open(partial, "w") as file:
        json.dump({**settings(args), "contents": contents}, file, indent=1)


def run_contents(args, data):
    """SHA-256 digests of what a run learns from: the teacher and student
    files, the `--config` file and the training and validation arrays.

    A resumed run compares them with the interrupted run's, so a file
    replaced at the same path is caught (paths alone are in `settings`).

    Args:
        args: the parsed `distill` arguments.
        data: `(x, y, x_val, y_val)` as loaded (`None` for a missing part).

    Returns:
        `{"teacher": hex, "student": hex, "config": hex or None, "data": hex}`.
    """
    import hashlib

    def file_digest(path):
        if not path:
            return None
        digest = hashlib.sha256()
        with open(path, "rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()

    arrays = hashlib.sha256()
    for array in data:
        array = None if array is None else np.ascontiguousarray(array)
        arrays.update(repr(None if array is None else (array.dtype.str, array.shape)).encode())
        if array is not None:
            arrays.update(array.tobytes())
    return {"teacher": file_digest(args.teacher), "student": file_digest(args.student),
            "config": file_digest(args.config), "data": arrays.hexdigest()}


def check_same_contents(contents, backup):
    """Raises UsageError if a resumed run's inputs differ by content from the
    interrupted run's (a teacher replaced at the same path, other data).

    Args:
        contents: this run's `run_contents`.
        backup: the interrupted run's backup folder.
    """
    with open(os.path.join(backup, RUN_RECORD)) as file:
        before = json.load(file).get("contents")
    if before is None:
        raise UsageError(f"--resume: the interrupted run's record in '{backup}' holds no digests of its "
                         f"teacher, student and data, so resuming could mix two runs. Pass --force "
                         f"instead of --resume to start over.")
    names = {"teacher": "the --teacher file", "student": "the --student file",
             "config": "the --config file", "data": "the --data/--val-data arrays"}
    changed = [name for name in names if before.get(name) != contents[name]]
    if changed:
        raise UsageError(
            f"--resume: {' and '.join(names[n] for n in changed)} changed since the run was interrupted "
            f"(same path, other content: SHA-256 {before.get(changed[0])!s:.12} then, "
            f"{contents[changed[0]]!s:.12} now), so the resumed epochs would learn from other inputs. "
            f"Restore the interrupted run's files, or pass --force instead of --resume to start over.")


def check_same_settings(args, backup):
    """Raises UsageError if `--resume` is given other settings than the
    interrupted run had."""
    record = os.path.join(backup, RUN_RECORD)
    try:
        with open(record) as file:
            before = json.load(file)
    except (OSError, ValueError) as error:
        raise UsageError(f"--resume: the interrupted run's record '{record}' cannot be read ({error}). "
                         f"Pass --force instead of --resume to start over.") from error
    now = settings(args)
    changed = [name for name in RESUMED_SETTINGS if before.get(name) != now[name]]
    if changed:
        differences = "; ".join(
            f"--{name.replace('_', '-')} {before.get(name)!r} then, {now[name]!r} now" for name in changed)
        raise UsageError(f"--resume: the interrupted run had other settings ({differences}). Pass the "
                         f"same arguments to resume, or --force instead of --resume to start over.")


def distillation_arguments(args):
    """The Distiller's loss arguments, from `--config` or from the flags.

    Returns:
        A dict of `distillation_losses`, `distillation_loss_weights` and
        `student_loss_weight`.

    Raises:
        UsageError: for a `--config` that is missing, not JSON, not an object
            with the expected keys, or names an unknown loss; for `--config`
            given with the flags it replaces; for a malformed `--feature`.
    """
    import keras_kd

    if not args.config:
        return {"distillation_losses": [keras_kd.LogitsDistillation(temperature=args.temperature),
                                        *map(feature_loss, args.feature)],
                "student_loss_weight": args.student_loss_weight}
    flags = [flag for flag, changed in (
        ("--temperature", args.temperature != TEMPERATURE),
        ("--student-loss-weight", args.student_loss_weight != STUDENT_LOSS_WEIGHT),
        ("--feature", bool(args.feature))) if changed]
    if flags:
        raise UsageError(f"--config replaces {', '.join(flags)}; pass one or the other.")
    config = read_config(args.config)
    return {
        "distillation_losses": [config_loss(entry, index, args.config)
                                for index, entry in enumerate(config["distillation_losses"])],
        "distillation_loss_weights": config.get("distillation_loss_weights"),
        "student_loss_weight": config.get("student_loss_weight", 0.5),
    }


CONFIG_KEYS = ("distillation_losses", "distillation_loss_weights", "student_loss_weight")


def read_config(path):
    """The JSON object of a `--config` file, checked for its keys.

    Raises:
        UsageError: if the file is missing, not JSON, or not an object with
            a `distillation_losses` list and only the keys of `CONFIG_KEYS`.
    """
    if not os.path.isfile(path):
        raise UsageError(f"Config file '{path}' does not exist.")
    with open(path) as file:
        try:
            config = json.load(file)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise UsageError(f"Config file '{path}' is not JSON: {error}.") from error
    expected = ("a JSON object with 'distillation_losses' (a list) and optionally "
                "'distillation_loss_weights' and 'student_loss_weight', as in examples/configs/")
    if not isinstance(config, dict):
        raise UsageError(f"Config file '{path}' holds a JSON {type(config).__name__}, but {expected} "
                         f"is expected.")
    unknown = sorted(set(config) - set(CONFIG_KEYS))
    if unknown or not isinstance(config.get("distillation_losses"), list):
        raise UsageError(f"Config file '{path}' has keys {sorted(config)}, but {expected} is expected.")
    return config


def config_loss(entry, index, path):
    """One distillation loss of a `--config` file.

    Raises:
        UsageError: if the entry is not a serialized keras_kd loss.
    """
    import keras

    import keras_kd

    where = f"Config file '{path}': distillation_losses[{index}]"
    if not isinstance(entry, dict) or "class_name" not in entry:
        raise UsageError(f"{where} is {json.dumps(entry)[:60]}, but an object "
                         f'{{"class_name": ..., "config": {{...}}}} is expected, e.g. '
                         f'{{"class_name": "LogitsDistillation", "config": {{"temperature": 4.0}}}}.')
    try:
        loss = keras.saving.deserialize_keras_object(entry)
    except Exception as error:  # noqa: BLE001 - any failure means "not a loss"
        raise UsageError(f"{where} ({entry['class_name']!r}) cannot be built: "
                         f"{str(error).strip().splitlines()[0]} Use one of: {', '.join(CONFIG_CLASSES)}.") from error
    if not isinstance(loss, keras_kd.DistillationLoss):
        raise UsageError(f"{where} names class {entry['class_name']!r}, which is not a keras_kd "
                         f"distillation loss. Use one of: {', '.join(CONFIG_CLASSES)}.")
    return loss


def feature_loss(spec):
    """A `FeatureDistillation` from `--feature TEACHER_LAYER:STUDENT_LAYER[:LOSS]`.

    Raises:
        UsageError: for a malformed spec or an unknown loss name.
    """
    import keras_kd

    parts = spec.split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise UsageError(f"--feature '{spec}' is not TEACHER_LAYER:STUDENT_LAYER[:LOSS], e.g. "
                         f"--feature conv2:conv1:mse.")
    name = parts[2] if len(parts) == 3 else "mse"
    if name not in FEATURE_LOSSES:
        raise UsageError(f"Unknown feature loss '{name}' in --feature '{spec}'. Use one of: "
                         f"{', '.join(FEATURE_LOSSES)}.")
    return keras_kd.FeatureDistillation(
        loss=name, teacher_layer_name=parts[0], student_layer_name=parts[1], projection="auto")


def check_models(teacher, student, losses):
    """Raises UsageError if teacher and student output different class counts
    while a loss compares their outputs."""
    import keras_kd

    compares_outputs = any(not isinstance(loss, keras_kd.FeatureDistillation) for loss in losses)
    t, s = classes_of(teacher), classes_of(student)
    if compares_outputs and t is not None and s is not None and t != s:
        raise UsageError(
            f"The teacher outputs {t} classes but the student {s}: logit distillation compares "
            f"the two outputs class by class. Pass a student whose last layer has {t} units."
        )


def check_inputs_fit(x, model, spec):
    """Raises UsageError when the data's inputs do not fit the model."""
    expected = tuple(model.inputs[0].shape[1:]) if model.inputs else None
    if expected is not None and (len(expected) != x.ndim - 1 or any(
            e is not None and e != g for e, g in zip(expected, x.shape[1:]))):
        raise UsageError(
            f"Data '{spec}' has inputs of shape {x.shape[1:]}, but the models take "
            f"{expected}. Pass data shaped like the models' input."
        )


def epoch_batches(columns, batch_size, seed):
    """Shuffled batches whose order depends on the seed and the epoch only.

    A `tf.data` shuffle draws each epoch's order from a generator that
    restarts with the process, so a run resumed at epoch 3 would replay
    epoch 1's order. Here the order of epoch `e` is a stateless shuffle
    seeded with `(seed, e)`, `e` being set by the returned callback when
    the epoch begins.

    Args:
        columns: a structure of arrays (the same number of samples each).
        batch_size: samples per batch (the last one may be smaller).
        seed: the shuffle's seed.

    Returns:
        `(dataset, callback)`: pass both to `fit`.
    """
    import keras
    import tensorflow as tf

    epoch = tf.Variable(0, dtype="int64", trainable=False)
    tensors = tf.nest.map_structure(tf.convert_to_tensor, columns)
    samples = int(tf.nest.flatten(tensors)[0].shape[0])

    def order(_):
        key = tf.stack([tf.constant(seed, "int64"), epoch.read_value()])
        indices = tf.random.experimental.stateless_shuffle(tf.range(samples, dtype="int64"), key)
        return tf.data.Dataset.from_tensor_slices(indices)

    dataset = tf.data.Dataset.range(1).flat_map(order).batch(batch_size).map(
        lambda indices: tf.nest.map_structure(lambda t: tf.gather(t, indices), tensors))
    # flat_map hides the length, which fit needs to know (else it warns).
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(-(-samples // batch_size)))

    class SetEpoch(keras.callbacks.Callback):
        def on_epoch_begin(self, index, logs=None):
            epoch.assign(index)

    return dataset.prefetch(tf.data.AUTOTUNE), SetEpoch()


def check_finite(history, student, args):
    """Raises UsageError if the loss or the student's weights became NaN/inf.

    Args:
        history: what `fit` returned.
        student: the trained student.
        args: the `distill` arguments, for the message.
    """
    losses = history.history.get("loss", [])
    epoch = next((history.epoch[i] + 1 for i, value in enumerate(losses) if not math.isfinite(value)), None)
    weights = sum(int(np.size(w) - np.count_nonzero(np.isfinite(w))) for w in student.get_weights())
    if epoch is None and not weights:
        return
    where = f"the loss became NaN or infinite in epoch {epoch}" if epoch else "the training diverged"
    raise UsageError(
        f"Training stopped: {where}, and {weights} student weights are NaN or infinite; no student "
        f"was written. Lower --learning-rate (it was {args.learning_rate:g}) or check the data and "
        f"the teacher."
    )


def _remove(path):
    if os.path.isdir(path):
        shutil.rmtree(path)


if __name__ == "__main__":
    sys.exit(main())
