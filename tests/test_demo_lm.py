"""`keras-kd demo lm`: byte tokens, pieces, bits per byte and the quick run."""

import math
import re

import keras
import numpy as np
import pytest
from keras_hub.src.tokenizers.byte_pair_tokenizer import bytes_to_unicode

from keras_kd import cache
from keras_kd.app import cli, demo_lm


def test_tokens_are_the_utf8_bytes_and_padding_has_no_weight():
    text = "Return the área of a\tcircle — π r².\n"
    tokenizer = demo_lm.tokenizer()
    assert tokenizer.vocabulary_size() == 258
    byte_symbols, _ = bytes_to_unicode()  # ids 0-255 in this order
    assert [int(i) for i in tokenizer(text)] == [byte_symbols.index(bytes([b])) for b in text.encode()]
    x, y, weight = demo_lm.preprocessor(sequence_length=64)([text, "a"])
    assert x["token_ids"].shape == (2, 64) and int(x["token_ids"][0, 0]) == 256  # <|endoftext|> first
    assert weight.numpy().sum(axis=1).tolist() == [len(text.encode()), 1]  # one token per byte, no end token
    assert tokenizer.detokenize(y[0][: len(text.encode())]) == text


def test_pieces_cut_at_line_ends_within_the_byte_budget_and_lose_nothing():
    texts = ["short", "line one\nline two\nline three\n", "é" * 20 + "\nend", ""]
    result = demo_lm.pieces(texts, max_bytes=12)
    assert "".join(result) == "".join(texts)
    assert all(0 < len(piece.encode()) <= 12 for piece in result)
    assert result[:4] == ["short", "line one\n", "line two\n", "line three\n"]
    assert result[4:] == ["é" * 6, "é" * 6, "é" * 6, "éé\nend"]  # never inside a character


def test_every_model_of_the_demo_sees_the_same_batches():
    texts = [f"{chr(65 + i)} piece" for i in range(12)]  # A..L
    make = demo_lm.fresh_batches(texts, demo_lm.preprocessor(sequence_length=16), batch_size=4, seed=0)

    def orders(dataset, epochs):  # the first token after the start token, per row, per epoch
        return [np.concatenate([x["token_ids"].numpy()[:, 1] for x, _, _ in dataset]).tolist()
                for _ in range(epochs)]

    first = make()
    seen = orders(first, 2)
    assert sorted(seen[0]) == sorted(seen[1]) and seen[0] != seen[1]  # reshuffled each epoch
    assert orders(make(), 2) == seen  # a fresh dataset starts the same sequence of orders
    assert orders(first, 1)[0] != seen[0]  # iterating the same one again continues it


def test_a_cache_row_trains_on_the_online_rows_batches(tmp_path):
    texts = [f"{chr(65 + i)} piece" for i in range(12)]
    preprocess = demo_lm.preprocessor(sequence_length=16)
    keras.utils.set_random_seed(0)
    teacher = demo_lm.language_model(demo_lm.QUICK_TEACHER, "teacher", sequence_length=16)
    keras.utils.set_random_seed(0)
    online = demo_lm.fresh_batches(texts, preprocess, batch_size=4, seed=0)()
    keras.utils.set_random_seed(0)
    cached, _, stored = demo_lm.cache_batches(teacher, texts, preprocess, str(tmp_path / "cache"), top_k=4, seed=0,
                                                batch_size=4)
    assert stored > 0 and len(cached) == len(online) == 3

    def epoch(dataset):
        return [cache.split(x)[0]["token_ids"].numpy() for x, _, _ in dataset]

    for _ in range(2):  # every epoch, the same batches in the same order
        for a, b in zip(epoch(online), epoch(cached), strict=True):
            np.testing.assert_array_equal(a, b)


def test_bits_per_byte_is_the_masked_mean_nll_in_bits():
    vocabulary, length = 7, 5
    token_ids = keras.Input((length,), dtype="int32", name="token_ids")
    padding_mask = keras.Input((length,), dtype="int32", name="padding_mask")
    embedding = keras.layers.Embedding(vocabulary, vocabulary, embeddings_initializer="random_normal")
    # `padding_mask` joins the graph with weight 0: Keras 3.12 refuses a model input no output uses.
    logits = embedding(token_ids) + 0.0 * keras.ops.cast(padding_mask, "float32")[..., None]
    model = keras.Model({"token_ids": token_ids, "padding_mask": padding_mask}, logits)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, vocabulary, (6, length)).astype("int32")
    targets = rng.integers(0, vocabulary, (6, length)).astype("int32")
    mask = (np.arange(length) < rng.integers(1, length + 1, (6, 1))).astype("int32")
    data = [({"token_ids": ids[i:i + 4], "padding_mask": mask[i:i + 4]}, targets[i:i + 4], mask[i:i + 4])
            for i in (0, 4)]  # batches of 4 and 2

    table = keras.ops.convert_to_numpy(embedding.embeddings).astype("float64")
    log_probs = table - np.log(np.exp(table).sum(-1, keepdims=True))
    nll = -log_probs[ids, targets]
    expected = nll[mask == 1].mean() / math.log(2)
    assert demo_lm.bits_per_byte(model, data) == pytest.approx(expected, rel=1e-5)
    assert nll[mask == 1].mean() != pytest.approx(nll.mean(), rel=1e-3)  # padding would change it

    nats, tokens = demo_lm.token_nll(model.predict_on_batch(data[0][0]), targets[:4], mask[:4])
    assert tokens == mask[:4].sum() and nats == pytest.approx(nll[:4][mask[:4] == 1].sum(), rel=1e-5)


@pytest.mark.slow
def test_quick_lm_demo_prints_the_table_in_bits_per_byte(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["demo", "lm", "--quick"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("model "))
    assert re.split(r"\s{2,}", lines[header]) == ["model", "test bits per byte", "parameters", "training time"]
    rows = {re.split(r"\s{2,}", line)[0]: re.split(r"\s{2,}", line)[1:] for line in lines[header + 2:header + 6]}
    assert list(rows) == ["teacher", "student, labels alone", "student, keras.distillation", "student, keras_kd"]
    for model, (bits, _, _) in rows.items():
        assert 0.5 < float(bits) < math.log2(258) + 0.5, model  # finite, at most about uniform
    assert rows["teacher"][1] == f"{demo_lm.teacher_model(quick=True).count_params():,}"
    assert "a smoke test of the pipeline, not results" in lines[header + 6]
    folder = tmp_path / demo_lm.QUICK_OUTPUT
    student = keras.models.load_model(folder / "student.keras")
    assert isinstance(student.generate("Return", max_length=12), str)
    for run in ("teacher", "student_alone", "student_keras_distillation", "student"):
        assert list((folder / "logs" / run / "train").glob("events.out.tfevents.*")), run


def test_lm_demo_refuses_the_classification_demos_epochs(capsys):
    assert cli.main(["demo", "lm", "--epochs", "2"]) == 2
    assert f"--epochs is the classification demo's; `keras-kd demo lm` trains the teacher {demo_lm.DEMO_TEACHER_EPOCHS} epochs" in (
        capsys.readouterr().err)
