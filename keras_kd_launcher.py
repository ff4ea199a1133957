"""The `keras-kd` console command's entry point, run before TensorFlow loads.

`import keras_kd` imports TensorFlow, whose C++ start-up lines (absl,
oneDNN, cudart, cuInit) reach stderr before Python can filter them. This
module sets `TF_CPP_MIN_LOG_LEVEL` (unless the user set it) and holds stderr
back while the package imports; what the import printed is replayed only if
the import fails. `--version` is answered without importing the package.
"""

import contextlib
import importlib.util
import os
import runpy
import sys
import tempfile


def main():
    """Runs `keras-kd` with the process's arguments; returns the exit code."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if sys.argv[1:] == ["--version"]:
        print(f"keras-kd {version()}")
        return 0
    with _stderr_held_back():
        from keras_kd.app import cli
    return cli.main()


def version():
    """`keras_kd.__version__`, read from `keras_kd/_version.py` without
    importing the package (and TensorFlow with it)."""
    package = importlib.util.find_spec("keras_kd")
    folder = package.submodule_search_locations[0]
    return runpy.run_path(os.path.join(folder, "_version.py"))["__version__"]


@contextlib.contextmanager
def _stderr_held_back():
    """Sends file descriptor 2 to a temporary file for the block; replays
    the file on stderr if the block raises."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            sys.stderr.flush()
            os.dup2(saved, 2)
            held.seek(0)
            sys.stderr.write(held.read().decode(errors="replace"))
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


if __name__ == "__main__":
    sys.exit(main())
