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
    return parser


def main(argv=None):
    """Entry point of `keras-kd`; returns the process exit code."""
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.command == "demo":
        from keras_kd import demo

        demo.run(
            output=args.output, quick=args.quick, epochs=args.epochs,
            seed=args.seed,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
