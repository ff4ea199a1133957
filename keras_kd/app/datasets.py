"""Data sets made or shipped locally, for the demo, the CLI and the benchmarks."""

import ast
import os
import sysconfig
import zipfile
import zlib

import numpy as np

from keras_kd import _extras


def mnist1d(seed=42, samples=5000):
    """MNIST-1D, generated locally by the `mnist1d` package (no download).

    Args:
        seed: the generator's seed; 42 is the data set of the paper.
        samples: how many to generate, split 80/20 into train and test;
            5000 is the data set of the paper. Other seeds and sizes draw
            fresh samples of the same ten templates.

    Returns:
        `((x_train, y_train), (x_test, y_test))`: 4000 and 1000 samples
        by default, `x` float32 of shape `(n, 40, 1)`, `y` int32 class ids
        0-9.

    Example:

    ```python
    (x_train, y_train), (x_test, y_test) = keras_kd.app.datasets.mnist1d()
    ```

    Reference:
        Greydanus & Kobak, "Scaling Down Deep Learning with MNIST-1D",
        ICML 2024, arXiv:2011.14439.
    """
    mnist1d_data = _extras.require("mnist1d.data", "MNIST-1D data (keras_kd.app.datasets.mnist1d)", "demo")
    get_dataset_args, make_dataset = mnist1d_data.get_dataset_args, mnist1d_data.make_dataset

    args = get_dataset_args()
    args.seed = seed
    args.num_samples = samples
    data = make_dataset(args)

    def features(x):
        return np.asarray(x, dtype="float32")[..., None]

    return (
        (features(data["x"]), np.asarray(data["y"], dtype="int32")),
        (features(data["x_test"]), np.asarray(data["y_test"], dtype="int32")),
    )


def stdlib_docstrings(validation=0.1, test=0.1, root=None):
    """Docstrings of Python's standard library, split by module (no download).

    Each top-level module of the standard library (the `.py` files directly
    in `root`: `argparse`, `collections`'s siblings such as `csv`, `os`, ...;
    packages and their tests are not read) is parsed with `ast`, never
    imported, and its docstrings are gathered in the order of `ast.walk`:
    the module's, then its classes' and functions' (`ast.get_docstring`,
    indentation cleaned). A module goes whole to one split, chosen from the CRC-32 of its
    name, so the split is deterministic across runs, machines and Python
    builds, and the test modules are unseen in training. Modules are read in
    sorted order. Python 3.11's 168 top-level modules give 0.89 M characters
    of docstrings; with the default shares, 19 modules (122 k characters)
    are the test split and 14 (146 k) the validation split.

    Args:
        validation: the share of modules in the validation split.
        test: the share of modules in the test split.
        root: the folder of the standard library; defaults to
            `sysconfig.get_paths()["stdlib"]`.

    Returns:
        `(train, validation, test)`: three lists of docstrings (str), each
        in module order.

    Raises:
        ValueError: if the shares are not in [0, 1) or sum to 1 or more, or
            if `root` holds no Python file with a docstring.

    Example:

    ```python
    train, validation, test = keras_kd.app.datasets.stdlib_docstrings()
    ```
    """
    if not (0 <= validation < 1 and 0 <= test < 1 and validation + test < 1):
        raise ValueError(f"`validation` and `test` are shares of the modules in [0, 1) whose sum is "
                         f"below 1; received validation={validation!r}, test={test!r}.")
    root = root or sysconfig.get_paths()["stdlib"]
    splits = ([], [], [])
    modules = 0
    for name in sorted(os.listdir(root)):
        module = name[:-3]
        path = os.path.join(root, name)
        if not name.endswith(".py") or not os.path.isfile(path):
            continue
        with open(path, "rb") as file:
            try:
                tree = ast.parse(file.read(), filename=path)
            except SyntaxError:  # e.g. a file for another Python version
                continue
        documented = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
        docstrings = [doc for node in ast.walk(tree) if isinstance(node, documented)
                      for doc in [ast.get_docstring(node)] if doc]
        if not docstrings:
            continue
        modules += 1
        share = zlib.crc32(module.encode()) / 2**32
        split = 2 if share < test else 1 if share < test + validation else 0
        splits[split].extend(docstrings)
    if not modules:
        raise ValueError(f"No Python file with a docstring in {root!r}: pass the folder of the "
                         f"standard library (sysconfig.get_paths()['stdlib']).")
    return splits


def split_validation(x, y, fraction=0.1, seed=0):
    """Carves a shuffled validation split off training data.

    Args:
        x: inputs.
        y: labels.
        fraction: the share of samples held out.
        seed: the shuffle's seed.

    Returns:
        `((x_train, y_train), (x_val, y_val))`.
    """
    order = np.random.default_rng(seed).permutation(len(x))
    held_out = int(round(len(x) * fraction))
    val, train = order[:held_out], order[held_out:]
    return (x[train], y[train]), (x[val], y[val])


TEACHER_GENERATOR = 2000
"""Generator seed (plus the run's seed) of the teacher's MNIST-1D samples."""
UNLABELLED_GENERATOR = 3000
"""Generator seed (plus the run's seed) of the user's unlabelled inputs."""
TEACHER_SAMPLES = 50_000  # 40,000 train
UNLABELLED_SAMPLES = 45_500  # 36,400 train


def _row_keys(x):
    return {row.tobytes() for row in np.asarray(x, "float32").reshape(len(x), -1)}


def teacher_knows_more(seed=0, teacher_samples=TEACHER_SAMPLES, unlabelled_samples=UNLABELLED_SAMPLES):
    """MNIST-1D as a user with a pretrained teacher has it.

    The user has the paper's 4,000 training samples (seed 42), of which
    10% are held out for validation, and its 1,000 test samples; the
    teacher learned from other labelled samples, and the user has further
    inputs without labels, both freshly generated (other generator seeds).

    Args:
        seed: the validation split's seed, also added to the generator
            seeds of the teacher's and the unlabelled data.
        teacher_samples: samples generated for the teacher (80% train:
            40,000 by default).
        unlabelled_samples: samples generated as unlabelled inputs (80%:
            36,400 by default).

    Returns:
        A dict of `(x, y)` pairs: `"labelled"` (3,600), `"validation"`
        (400), `"test"` (1,000), `"teacher"` (the teacher's 40,000) and
        `"unlabelled"` (36,400; their labels are for yardsticks only).

    Raises:
        RuntimeError: if any input occurs in two of the teacher's data, the
            unlabelled inputs, the user's 4,000 and the test inputs.

    Example:

    ```python
    data = keras_kd.app.datasets.teacher_knows_more(seed=0)
    x_pool = np.concatenate([data["labelled"][0], data["unlabelled"][0]])
    ```
    """
    (x, y), test = mnist1d()
    labelled, validation = split_validation(x, y, fraction=0.1, seed=seed)
    teacher, _ = mnist1d(seed=TEACHER_GENERATOR + seed, samples=teacher_samples)
    unlabelled, _ = mnist1d(seed=UNLABELLED_GENERATOR + seed, samples=unlabelled_samples)
    sets = {"teacher's": _row_keys(teacher[0]), "unlabelled": _row_keys(unlabelled[0]),
            "user's": _row_keys(x), "test": _row_keys(test[0])}
    names = list(sets)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            shared = len(sets[first] & sets[second])
            if shared:
                raise RuntimeError(f"{shared} inputs are both in the {first} and the {second} data.")
    return {"labelled": labelled, "validation": validation, "test": test, "teacher": teacher,
            "unlabelled": unlabelled}


def digits(seed=0):
    """scikit-learn's 8x8 digits (shipped with the package, no download).

    Args:
        seed: the seed of the 80/20 train/test split.

    Returns:
        `((x_train, y_train), (x_test, y_test))`, `x` float32 of shape
        `(n, 8, 8, 1)` scaled to [0, 1], `y` int32 class ids 0-9.
    """
    sklearn_datasets = _extras.require(
        "sklearn.datasets", "The digits data (keras_kd.app.datasets.digits)", "demo")
    data = sklearn_datasets.load_digits()
    x = (data.images / 16.0).astype("float32")[..., None]
    y = data.target.astype("int32")
    (x_train, y_train), (x_test, y_test) = split_validation(x, y, 0.2, seed)
    return (x_train, y_train), (x_test, y_test)


def npz(path):
    """Arrays from a `.npz` file: `x`, optional `y`, `x_val`, `y_val`.

    Args:
        path: the file.

    Returns:
        `((x, y), (x_val, y_val))`; missing arrays are `None`. Inputs are
        float32; labels as stored.

    Raises:
        ValueError: if the file is not an `.npz` archive (a zip of `.npy`
            arrays, as `np.savez` writes), has no `x` array, or holds
            arrays of Python objects or of non-numbers.
    """
    if os.path.isdir(path):
        raise ValueError(f"Data path '{path}' is a folder, not an .npz file. {_SAVE_NPZ}")
    if not zipfile.is_zipfile(path):
        size = os.path.getsize(path)
        what = "is empty (0 bytes)" if size == 0 else f"({size:,} bytes) is not an .npz archive"
        raise ValueError(f"Data file '{path}' {what}. {_SAVE_NPZ}")
    with np.load(path, allow_pickle=False) as arrays:
        if "x" not in arrays:
            raise ValueError(f"Data file '{path}' has arrays {sorted(arrays.files)} but no 'x'. {_SAVE_NPZ}")
        found = {key: _read_array(arrays, key, path) for key in ("x", "y", "x_val", "y_val")}
    return (
        (found["x"].astype("float32"), found["y"]),
        (None if found["x_val"] is None else found["x_val"].astype("float32"), found["y_val"]),
    )


_SAVE_NPZ = "Save the data with np.savez(path, x=inputs, y=labels[, x_val=..., y_val=...])."


def _read_array(arrays, key, path):
    """One numeric array of an open `.npz` file, or `None` if it is absent."""
    if key not in arrays:
        return None
    try:
        array = arrays[key]
    except ValueError as error:
        if "allow_pickle" in str(error):
            raise ValueError(
                f"Array '{key}' in '{path}' holds Python objects (dtype=object), which are "
                f"not loaded: unpickling a file can run code. Save numeric arrays, e.g. "
                f"np.savez(path, {key}=np.asarray({key}, 'float32'))."
            ) from None
        raise ValueError(f"Array '{key}' in '{path}' cannot be read ({error}). {_SAVE_NPZ}") from None
    except (OSError, zipfile.BadZipFile, EOFError) as error:
        raise ValueError(f"Array '{key}' in '{path}' cannot be read ({error}). {_SAVE_NPZ}") from None
    if array.dtype.kind not in "biuf":
        raise ValueError(
            f"Array '{key}' in '{path}' has dtype {array.dtype}, not numbers. "
            f"Save numeric arrays (float inputs, integer class ids)."
        )
    return array


def check(x, y, name, classes=None):
    """Checks arrays before training on them; returns them cleaned.

    Args:
        x: inputs.
        y: class-id labels, or `None` for unlabelled data.
        name: what the data is called in messages (its spec).
        classes: the models' number of classes, to check labels against.

    Returns:
        `(x, y)`: `x` as float32, `y` as int32 of shape `(n,)` (a `(n, 1)`
        column is flattened), or `None`.

    Raises:
        ValueError: if `x` has no samples or non-finite values, or the
            labels are not one whole number per sample in `[0, classes)`.
            Each message gives how many values are wrong.
    """
    x = np.asarray(x)
    if x.ndim == 0 or len(x) == 0:
        raise ValueError(f"Data '{name}' has no samples (inputs of shape {x.shape}). Pass a non-empty data set.")
    x = x.astype("float32")
    bad = int(x.size - np.count_nonzero(np.isfinite(x)))
    if bad:
        samples = int(np.count_nonzero(~np.isfinite(x).reshape(len(x), -1).all(axis=1)))
        raise ValueError(
            f"Data '{name}' has {bad} NaN or infinite input values (in {samples} of {len(x)} "
            f"samples). Remove those samples or replace the values (e.g. np.nan_to_num) first."
        )
    if y is None:
        return x, None
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(
            f"Data '{name}' has labels of shape {y.shape}, but class ids of shape ({len(x)},) "
            f"are expected. For one-hot labels pass y.argmax(-1)."
        )
    if len(y) != len(x):
        raise ValueError(f"Data '{name}' has {len(x)} inputs but {len(y)} labels. Pass one label per input.")
    _check_labels(y, name, classes)
    return x, y.astype("int32")


def _check_labels(y, name, classes):
    expected = f"class ids 0..{classes - 1}" if classes else "class ids 0, 1, 2, ..."
    problems = (
        (~np.isfinite(y) | (y != np.round(y)) if y.dtype.kind == "f" else np.zeros(len(y), bool),
         "are not whole numbers"),
        (y < 0, "are negative"),
        (y >= classes if classes else np.zeros(len(y), bool), f"are {classes} or more"),
    )
    for wrong, what in problems:
        count = int(np.count_nonzero(wrong))
        if count:
            example = y[wrong][0]
            raise ValueError(
                f"Data '{name}' has {count} of {len(y)} labels that {what} (e.g. {example:g}), "
                f"but labels must be {expected}"
                + (f", as the models output {classes} classes" if classes else "")
                + ". Fix or remove those labels."
            )


def tfds(name, split="train"):
    """A tensorflow-datasets split as NumPy `(x, y)` (supervised keys).

    Images are scaled to [0, 1]. Read from the local tensorflow-datasets
    folder, else downloaded (like `tfds.load`) after a quick network check.

    Args:
        name: the data set's name, e.g. `"mnist"`.
        split: the split, e.g. `"train"` or `"test[:10%]"`.

    Returns:
        `(x, y)` NumPy arrays.
    """
    tensorflow_datasets = _extras.require(
        "tensorflow_datasets", "tfds:NAME data (keras_kd.app.datasets.tfds)", "tfds")
    try:  # what is already in the local tensorflow-datasets folder
        dataset = tensorflow_datasets.load(name, split=split, as_supervised=True, download=False)
    except AssertionError:  # tfds's "could not find data in ...": a download is needed
        check_online(name)
        dataset = tensorflow_datasets.load(name, split=split, as_supervised=True)
    batches = list(dataset.batch(1024).as_numpy_iterator())
    x = np.concatenate([b[0] for b in batches]).astype("float32")
    y = np.concatenate([b[1] for b in batches])
    if x.max() > 1.0:
        x = x / 255.0
    return x, y.astype("int32")


DOWNLOAD_HOST = ("storage.googleapis.com", 443)
"""Where tensorflow-datasets downloads from first: reached once, quickly,
before a download, so that an offline machine fails at once."""


def check_online(name):
    """Raises `ValueError` at once if the host tfds downloads from cannot be reached.

    Without it, an offline `tfds.load` retries each download for minutes.

    Args:
        name: the data set's name, for the message.
    """
    import socket

    try:
        socket.create_connection(DOWNLOAD_HOST, timeout=5).close()
    except OSError as error:
        raise ValueError(
            f"Data set '{name}' is not in the local tensorflow-datasets folder and cannot be "
            f"downloaded: no network connection ({DOWNLOAD_HOST[0]}: {error}). Run tfds.load('{name}') "
            f"once on a machine with network and copy ~/tensorflow_datasets here (or set TFDS_DATA_DIR), "
            f"or pass npz:PATH."
        ) from error


SPECS = "mnist1d, digits, npz:PATH or tfds:NAME[:SPLIT]"


def load(spec):
    """Loads a data set named on the command line.

    Args:
        spec: `mnist1d`, `digits`, `npz:PATH` or `tfds:NAME[:SPLIT]`.

    Returns:
        `((x, y), (x_val, y_val))`; the validation pair is the data set's
        test split (`None`s for `npz:` files without `x_val` and for tfds).

    Raises:
        ValueError: for an unknown spec or a missing file.
    """
    kind, _, rest = spec.partition(":")
    if spec == "mnist1d":
        return mnist1d()
    if spec == "digits":
        return digits()
    if kind == "npz" and rest:
        if not os.path.exists(rest):
            raise ValueError(f"Data file '{rest}' does not exist. Pass npz:PATH to an existing .npz file.")
        return npz(rest)
    if kind == "tfds" and rest:
        name, _, split = rest.partition(":")
        return tfds(name, split or "train"), (None, None)
    raise ValueError(f"Unknown data spec '{spec}'. Pass one of: {SPECS}.")
