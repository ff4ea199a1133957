"""Locally generated data sets: sizes, dtypes and fresh samples."""

import numpy as np

from keras_kd import datasets


def test_mnist1d_default_is_the_papers_split_and_sizes_are_configurable():
    (x, y), (x_test, y_test) = datasets.mnist1d()
    assert x.shape == (4000, 40, 1) and x_test.shape == (1000, 40, 1)
    assert x.dtype == np.float32 and y.dtype == np.int32 and set(np.unique(y)) == set(range(10))
    (x_again, _), _ = datasets.mnist1d()
    np.testing.assert_array_equal(x, x_again)

    (x_small, y_small), (x_small_test, _) = datasets.mnist1d(seed=1000, samples=500)
    assert x_small.shape == (400, 40, 1) and x_small_test.shape == (100, 40, 1) and len(y_small) == 400
    assert not np.isin(x_small[:, :, 0].sum(axis=1), x[:, :, 0].sum(axis=1)).any()  # fresh samples


def test_split_validation_is_a_disjoint_shuffled_partition():
    x = np.arange(50, dtype="float32")
    (x_train, y_train), (x_val, y_val) = datasets.split_validation(x, -x, fraction=0.2, seed=3)
    assert len(x_val) == 10 and len(x_train) == 40
    np.testing.assert_array_equal(np.sort(np.concatenate([x_train, x_val])), x)
    np.testing.assert_array_equal(y_val, -x_val)
    assert not np.array_equal(x_val, x[:10])
