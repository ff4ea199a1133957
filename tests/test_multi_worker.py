"""MultiWorkerMirroredStrategy: 2 worker processes on 127.0.0.1 train like one."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tests import multi_worker_job

pytestmark = pytest.mark.slow  # end-to-end: run by .ci/run, not by the fast suite

JOB = os.path.join(os.path.dirname(__file__), "multi_worker_job.py")


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def run_workers(tmp_path, backup_dir=None, timeout=240):
    """Starts both workers, waits, always kills them; returns exit codes and outputs."""
    ports = ",".join(map(str, free_ports(2)))
    outputs = [tmp_path / f"worker_{i}.npz" for i in range(2)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    extra = [str(backup_dir)] if backup_dir else []
    workers = [
        subprocess.Popen([sys.executable, JOB, str(i), ports, str(out), *extra], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i, out in enumerate(outputs)
    ]
    try:
        codes = [worker.wait(timeout=timeout) for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    logs = [worker.stdout.read()[-2000:] for worker in workers]
    return codes, outputs, logs


def weights_of(path):
    with np.load(path) as saved:
        return [saved[f"arr_{i}"] for i in range(len(saved.files) - 1)], saved["loss"]


@pytest.fixture(scope="module")
def single_process():
    return multi_worker_job.run(tf.distribute.get_strategy())


def test_two_workers_end_with_the_single_process_weights(tmp_path, single_process):
    codes, outputs, logs = run_workers(tmp_path)
    assert codes == [0, 0], logs
    (first, first_loss), (second, second_loss) = weights_of(outputs[0]), weights_of(outputs[1])
    reference, history = single_process
    for a, b, r in zip(first, second, reference):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, r, atol=1e-5)
    np.testing.assert_array_equal(first_loss, second_loss)
    np.testing.assert_allclose(first_loss, history["loss"], rtol=1e-5)


def test_killed_workers_resume_from_backup_to_the_uninterrupted_weights(tmp_path, single_process):
    backup = tmp_path / "backup"
    backup.mkdir()
    codes, _, logs = run_workers(tmp_path, backup)
    assert codes == [3, 3], logs  # both crashed at the start of epoch 2
    codes, outputs, logs = run_workers(tmp_path, backup)
    assert codes == [0, 0], logs
    reference, _ = single_process
    for worker_output in outputs:
        for a, r in zip(weights_of(worker_output)[0], reference):
            np.testing.assert_allclose(a, r, atol=1e-5)
