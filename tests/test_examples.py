"""The example scripts run as they are (MNIST-1D) or on mocked data (tfds)."""

import importlib.util
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow_datasets as tfds

pytestmark = pytest.mark.slow  # end-to-end: run by .ci/run, not by the fast suite

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def load_example(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "script, arguments",
    [
        ("distill_mnist1d.py", ["--epochs", "1"]),
        ("feature_distillation.py", ["--epochs", "1"]),
        ("fitnets_two_stage.py", ["--epochs", "2", "--hint-epochs", "1"]),
    ],
)
def test_mnist1d_examples_run_as_scripts(tmp_path, script, arguments):
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *arguments],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    student = keras.models.load_model(tmp_path / "student.keras")
    assert student.output_shape == (None, 10)


def test_tfds_example_trains_on_mocked_mnist(tmp_path, monkeypatch):
    example = load_example("distill_tfds_mnist")
    monkeypatch.chdir(tmp_path)
    with tfds.testing.mock_data(num_examples=64, policy=tfds.testing.MockPolicy.USE_CODE):
        train_ds, _ = example.load_data(batch_size=32)
        images, labels = next(iter(train_ds))
        assert images.shape == (32, 28, 28, 1) and images.dtype == "float32"
        assert float(np.max(images)) <= 1.0 and labels.shape == (32,)
        example.main(epochs=1)
    assert (tmp_path / "student.keras").exists()
