"""The demo's latency column and verdicts."""

import keras
import numpy as np
import pytest

import keras_kd
from keras_kd.app import compare
from tests.helpers import dense_classifier


@pytest.mark.parametrize("accuracy, reference, spread, word", [
    (0.955, 0.950, 0.4, "BEATS"),   # +0.5 > 0.4
    (0.954, 0.950, 0.4, "TIES"),    # +0.4: the edge is a tie
    (0.950, 0.950, 0.4, "TIES"),
    (0.946, 0.950, 0.4, "TIES"),    # -0.4
    (0.945, 0.950, 0.4, "LOSES"),   # -0.5
    (0.951, 0.950, 0.0, "BEATS"),   # no band: any difference counts
])
def test_the_verdict_rule_at_its_edges(accuracy, reference, spread, word):
    got, points = compare.verdict(accuracy, reference, spread)
    assert got == word
    assert points == pytest.approx(100 * (accuracy - reference))


def test_the_verdict_line_says_the_difference_and_the_band():
    assert compare.verdict_line("keras_kd", 0.971, "keras.distillation", 0.963, 0.4) == (
        "keras_kd BEATS keras.distillation: +0.8 points (ties within ±0.4)")


def test_median_seconds_is_the_median_of_the_timed_calls(monkeypatch):
    ticks = iter([0.0, 1.0, 10.0, 12.0, 20.0, 20.5])  # calls of 1, 2 and 0.5 s
    monkeypatch.setattr(compare.time, "perf_counter", lambda: next(ticks))
    calls = []
    assert compare.median_seconds(lambda: calls.append(1), calls=3, warmup=2) == 1.0
    assert len(calls) == 5


def test_latencies_of_a_keras_model_and_its_int8_file(tmp_path, monkeypatch):
    model = dense_classifier(8, features=8)
    x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
    keras_seconds = compare.keras_latency(model, compare.as_sample(x), calls=20, warmup=2)
    assert np.isfinite(keras_seconds) and keras_seconds > 0

    keras_kd.export_student(model, tmp_path / "m.tflite", quantization="int8", representative_data=x)
    from ai_edge_litert import interpreter

    invoked = []
    runner = interpreter.SignatureRunner.__call__
    monkeypatch.setattr(interpreter.SignatureRunner, "__call__",
                        lambda self, **kw: invoked.append(1) or runner(self, **kw))
    litert_seconds = compare.litert_latency(tmp_path / "m.tflite", compare.as_sample(x), calls=20, warmup=2)
    assert np.isfinite(litert_seconds) and litert_seconds > 0
    assert len(invoked) == 22  # every call ran the file in the LiteRT interpreter
    assert keras.ops.shape(model(x[:1])) == (1, 3)
