"""Locally generated data sets: sizes, dtypes and fresh samples."""

import numpy as np
import pytest

from keras_kd.app import datasets


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


def test_check_returns_float_inputs_and_flat_int_labels():
    x, y = datasets.check(np.zeros((4, 3), "float64"), np.array([[0], [2], [1], [2]]), "toy", classes=3)
    assert x.dtype == np.float32 and y.dtype == np.int32 and y.tolist() == [0, 2, 1, 2]
    x, y = datasets.check(np.ones((2, 3)), None, "toy")
    assert y is None and x.shape == (2, 3)


@pytest.mark.parametrize(
    "x, y, message",
    [
        (np.ones((4, 3)), np.zeros((4, 10)), r"labels of shape \(4, 10\), but class ids of shape \(4,\) .* y.argmax\(-1\)"),
        (np.ones((4, 3)), np.zeros(3), "has 4 inputs but 3 labels"),
        (np.ones((4, 3)), np.array([0, 1, np.nan, 2]), "has 1 of 4 labels that are not whole numbers"),
    ],
)
def test_check_refuses_labels_that_are_not_one_class_id_per_sample(x, y, message):
    with pytest.raises(ValueError, match=message):
        datasets.check(x, y, "toy", classes=3)


def test_npz_reads_its_arrays_and_refuses_other_files(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.ones((3, 2), "float64"), y=np.arange(3))
    (x, y), (x_val, y_val) = datasets.npz(tmp_path / "d.npz")
    assert x.dtype == np.float32 and y.tolist() == [0, 1, 2] and x_val is None and y_val is None
    np.save(tmp_path / "a.npy", np.ones(3))
    with pytest.raises(ValueError, match=r"\(152 bytes\) is not an .npz archive. Save the data with np.savez"):
        datasets.npz(tmp_path / "a.npy")
    np.savez(tmp_path / "s.npz", x=np.array(["a", "b"]))
    with pytest.raises(ValueError, match=r"Array 'x' in .* has dtype <U1, not numbers"):
        datasets.npz(tmp_path / "s.npz")


def _module(folder, name, text):
    (folder / f"{name}.py").write_text(text, encoding="utf-8")


def test_stdlib_docstrings_splits_whole_modules_by_name_deterministically(tmp_path):
    for i in range(40):
        _module(tmp_path, f"mod{i}", f'"""Module {i}."""\n\nclass C:\n    """Class {i}."""\n\n'
                                     f'    def f(self):\n        """Function {i}.\n\n        Indented."""\n')
    _module(tmp_path, "nodoc", "x = 1\n")
    _module(tmp_path, "broken", "def (:\n")
    (tmp_path / "package").mkdir()
    _module(tmp_path / "package", "__init__", '"""A package: not read."""\n')
    splits = datasets.stdlib_docstrings(validation=0.2, test=0.2, root=str(tmp_path))
    assert splits == datasets.stdlib_docstrings(validation=0.2, test=0.2, root=str(tmp_path))
    modules = [{doc.split()[1].rstrip(".") for doc in split if doc.startswith("Module")} for split in splits]
    assert all(modules) and sum(len(m) for m in modules) == 40
    assert not (modules[0] & modules[1] or modules[0] & modules[2] or modules[1] & modules[2])
    for split, names in zip(splits, modules):  # a module's docstrings go together, cleaned
        expected = [[f"Module {i}.", f"Class {i}.", f"Function {i}.\n\nIndented."] for i in names]
        assert sorted(split) == sorted(sum(expected, []))
    everything = datasets.stdlib_docstrings(validation=0, test=0, root=str(tmp_path))
    assert everything[1:] == ([], []) and sorted(everything[0]) == sorted(sum(splits, []))


def test_stdlib_docstrings_of_this_python_are_non_empty():
    train, validation, test = datasets.stdlib_docstrings()
    assert len(train) > 1000 and len(validation) > 100 and len(test) > 100
    assert sum(map(len, train)) > 4 * sum(map(len, test)) > 0


@pytest.mark.parametrize("shares", [(-0.1, 0.1), (0.5, 0.5), (0.1, 1.0)])
def test_stdlib_docstrings_refuses_shares_outside_0_1(shares):
    with pytest.raises(ValueError, match=r"shares of the modules in \[0, 1\) whose sum is below 1"):
        datasets.stdlib_docstrings(*shares)


def test_stdlib_docstrings_refuses_a_folder_without_python(tmp_path):
    with pytest.raises(ValueError, match="No Python file with a docstring in .*sysconfig"):
        datasets.stdlib_docstrings(root=str(tmp_path))


def test_tfds_data_missing_offline_fails_at_once_with_one_line(tmp_path, monkeypatch):
    import socket

    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))  # nothing downloaded there
    attempts = []

    def offline(address, timeout=None):
        attempts.append(address)
        raise OSError(-2, "Name or service not known")

    monkeypatch.setattr(socket, "create_connection", offline)
    with pytest.raises(ValueError, match=r"^Data set 'mnist' is not in the local tensorflow-datasets folder and "
                                         r"cannot be downloaded: no network connection \(storage.googleapis.com: "
                                         r"\[Errno -2\] Name or service not known\)\. Run tfds.load\('mnist'\) once"):
        datasets.load("tfds:mnist")
    assert attempts == [datasets.DOWNLOAD_HOST]  # one quick check, no download retries
