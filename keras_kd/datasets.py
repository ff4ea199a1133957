"""Data sets made or shipped locally, for the demo, the CLI and the benchmarks."""

import os

import numpy as np


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
    (x_train, y_train), (x_test, y_test) = keras_kd.datasets.mnist1d()
    ```

    Reference:
        Greydanus & Kobak, "Scaling Down Deep Learning with MNIST-1D",
        ICML 2024, arXiv:2011.14439.
    """
    from mnist1d.data import get_dataset_args, make_dataset

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


def digits(seed=0):
    """scikit-learn's 8x8 digits (shipped with the package, no download).

    Args:
        seed: the seed of the 80/20 train/test split.

    Returns:
        `((x_train, y_train), (x_test, y_test))`, `x` float32 of shape
        `(n, 8, 8, 1)` scaled to [0, 1], `y` int32 class ids 0-9.
    """
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images / 16.0).astype("float32")[..., None]
    y = data.target.astype("int32")
    (x_train, y_train), (x_test, y_test) = split_validation(x, y, 0.2, seed)
    return (x_train, y_train), (x_test, y_test)


def npz(path):
    """Arrays from a `.npz` file: `x`, optional `y`, `x_val`, `y_val`.

    Args:
        path: the file.

    Returns:
        `((x, y), (x_val, y_val))`; missing arrays are `None`.

    Raises:
        ValueError: if the file has no `x` array.
    """
    with np.load(path) as arrays:
        if "x" not in arrays:
            raise ValueError(
                f"'{path}' has arrays {sorted(arrays.files)} but no 'x'. Save "
                f"it with np.savez(path, x=inputs, y=labels[, x_val=..., "
                f"y_val=...])."
            )
        get = lambda key: np.asarray(arrays[key]) if key in arrays else None  # noqa: E731
        x, x_val = get("x"), get("x_val")
        return (
            (x.astype("float32"), get("y")),
            (None if x_val is None else x_val.astype("float32"), get("y_val")),
        )


def tfds(name, split="train"):
    """A tensorflow-datasets split as NumPy `(x, y)` (supervised keys).

    Images are scaled to [0, 1]. Downloads on first use, like `tfds.load`.

    Args:
        name: the data set's name, e.g. `"mnist"`.
        split: the split, e.g. `"train"` or `"test[:10%]"`.

    Returns:
        `(x, y)` NumPy arrays.
    """
    import tensorflow_datasets

    dataset = tensorflow_datasets.load(name, split=split, as_supervised=True)
    batches = list(dataset.batch(1024).as_numpy_iterator())
    x = np.concatenate([b[0] for b in batches]).astype("float32")
    y = np.concatenate([b[1] for b in batches])
    if x.max() > 1.0:
        x = x / 255.0
    return x, y.astype("int32")


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
