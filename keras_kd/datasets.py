"""Data sets made or shipped locally, for the demo, the CLI and the benchmarks."""

import numpy as np

MNIST1D_CLASSES = 10


def mnist1d(seed=42):
    """MNIST-1D, generated locally by the `mnist1d` package (no download).

    Args:
        seed: the generator's seed; 42 is the data set of the paper.

    Returns:
        `((x_train, y_train), (x_test, y_test))`: 4000 and 1000 samples,
        `x` float32 of shape `(n, 40, 1)`, `y` int32 class ids 0-9.

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
