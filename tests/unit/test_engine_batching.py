"""The batch planner and TextClassifier: order, limits, edge cases, one output per input."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from engine.backends.base import Backend
from engine.classifier import TextClassifier, plan_batches
from engine.errors import InferenceOutputError
from engine.modeling import HeadSpec
from engine.tokenize import BatchTokenizer, EncodedBatch

HEAD = HeadSpec("len", ("frac", "rest"))


class EchoBackend(Backend):
    """Answers each row with its own token count, so the caller can check where each result went."""

    name: ClassVar[str] = "echo"
    _returns_probabilities: ClassVar[bool] = True

    def __init__(self, max_batch_size: int = 64, max_seq_len: int = 128) -> None:
        super().__init__((HEAD,), max_batch_size, max_seq_len, "echo")
        self.shapes: list[tuple[int, int]] = []

    def _infer_impl(self, batch: EncodedBatch) -> dict[str, np.ndarray]:
        self.shapes.append((batch.size, batch.seq_len))
        frac = batch.attention_mask.sum(axis=1).astype(np.float32) / 1000.0
        return {"len": np.stack([frac, 1.0 - frac], axis=1)}


class DroppingBackend(EchoBackend):
    """Returns one row too few: the engine must notice, not hand back misaligned results."""

    def _infer_impl(self, batch: EncodedBatch) -> dict[str, np.ndarray]:
        out = super()._infer_impl(batch)
        return {"len": out["len"][:-1]}


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> BatchTokenizer:
    return BatchTokenizer(tiny_model_dir / "tokenizer.json", max_seq_len=64, pad_multiple=16)


def _padded(n: int, multiple: int = 16, cap: int = 64) -> int:
    return min(-(-n // multiple) * multiple, max(cap, n))


# --- plan_batches ---------------------------------------------------------------------------------
def test_plan_empty() -> None:
    assert plan_batches(np.array([], dtype=np.int64), 8, 1000, 16, 64) == []


def test_plan_covers_every_index_once_within_limits() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 64, size=500)
    batches = plan_batches(lengths, max_batch_size=32, max_tokens=512, pad_multiple=16, max_seq_len=64)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(500))
    for b in batches:
        assert 1 <= b.size <= 32
        padded = _padded(int(lengths[b].max()))
        assert b.size == 1 or b.size * padded <= 512
    # Length-sorted: no batch's shortest text is shorter than the previous batch's longest.
    for prev, nxt in itertools.pairwise(batches):
        assert lengths[nxt].min() >= lengths[prev].max()


def test_plan_single_text_over_budget_gets_own_batch() -> None:
    lengths = np.array([10, 120, 12])
    batches = plan_batches(lengths, max_batch_size=8, max_tokens=64, pad_multiple=16, max_seq_len=128)
    assert [b.tolist() for b in batches] == [[0, 2], [1]]


def test_plan_batch_of_one() -> None:
    batches = plan_batches(np.array([7]), max_batch_size=1, max_tokens=16, pad_multiple=16, max_seq_len=64)
    assert [b.tolist() for b in batches] == [[0]]


# --- TextClassifier -------------------------------------------------------------------------------
def test_classifier_keeps_input_order(tokenizer: BatchTokenizer, sample_texts: list[str]) -> None:
    texts = sample_texts[:150]
    backend = EchoBackend(max_batch_size=16)
    clf = TextClassifier(tokenizer, backend, max_tokens_per_batch=256)
    out = clf.classify(texts)["len"]
    expected = tokenizer.tokenize(texts).lengths
    assert out.shape == (len(texts), 2)
    np.testing.assert_array_equal(np.rint(out[:, 0] * 1000).astype(np.int64), expected)


def test_classifier_respects_batch_size_and_token_budget(tokenizer: BatchTokenizer, sample_texts: list[str]) -> None:
    backend = EchoBackend(max_batch_size=64)
    clf = TextClassifier(tokenizer, backend, max_batch_size=8, max_tokens_per_batch=128)
    clf.classify(sample_texts[:100])
    assert backend.shapes
    for size, seq in backend.shapes:
        assert size <= 8
        assert size == 1 or size * seq <= 128
        assert seq % 16 == 0 and seq <= 64
    stats = clf.stats.as_dict()
    assert stats["texts"] == 100 and stats["calls"] == len(backend.shapes)
    assert stats["padded_tokens"] >= stats["real_tokens"]


def test_classifier_batch_of_one(tokenizer: BatchTokenizer) -> None:
    backend = EchoBackend()
    out = TextClassifier(tokenizer, backend).classify(["$AAPL up"])["len"]
    assert out.shape == (1, 2)
    assert backend.shapes == [(1, 16)]


def test_classifier_empty_input(tokenizer: BatchTokenizer) -> None:
    backend = EchoBackend()
    out = TextClassifier(tokenizer, backend).classify([])
    assert out["len"].shape == (0, 2)
    assert backend.shapes == []


def test_classifier_truncates_long_texts(tokenizer: BatchTokenizer) -> None:
    long_text = " ".join(["markets rally on strong earnings"] * 200)
    backend = EchoBackend(max_seq_len=64)
    out = TextClassifier(tokenizer, backend).classify(["short one", long_text])["len"]
    assert backend.shapes[-1][1] == 64
    assert round(out[1, 0] * 1000) == 64  # truncated to max_seq_len, [SEP] included
    assert round(out[0, 0] * 1000) < 16


def test_classifier_detects_missing_rows(tokenizer: BatchTokenizer) -> None:
    clf = TextClassifier(tokenizer, DroppingBackend())
    with pytest.raises(InferenceOutputError, match="returned shape"):
        clf.classify(["one text", "another text"])


def test_classifier_never_exceeds_backend_max_batch(tokenizer: BatchTokenizer, sample_texts: list[str]) -> None:
    backend = EchoBackend(max_batch_size=4)
    clf = TextClassifier(tokenizer, backend, max_batch_size=64, max_tokens_per_batch=100_000)
    assert clf.max_batch_size == 4
    out = clf.classify(sample_texts[:30])["len"]
    assert out.shape[0] == 30
    assert max(s for s, _ in backend.shapes) <= 4


@pytest.mark.parametrize(
    ("vocab", "padding", "expected"),
    [
        # MPNet/RoBERTa order: '<pad>' is 1, and the file says so.
        ({"<s>": 0, "<pad>": 1, "</s>": 2, "[UNK]": 3, "up": 4, "down": 5}, True, 1),
        # No padding setting saved: found by name.
        ({"<s>": 0, "<pad>": 1, "</s>": 2, "[UNK]": 3, "up": 4, "down": 5}, False, 1),
        ({"[UNK]": 0, "up": 1, "[PAD]": 2, "down": 3}, False, 2),
        ({"[UNK]": 0, "up": 1, "down": 2}, False, 0),
    ],
)
def test_batches_pad_with_the_tokenizers_own_pad_id(
    tmp_path: Path, vocab: dict[str, int], padding: bool, expected: int
) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if padding:
        tok.enable_padding(pad_id=1, pad_token="<pad>")
    tok.save(str(tmp_path / "tokenizer.json"))
    bt = BatchTokenizer(tmp_path / "tokenizer.json", max_seq_len=8, pad_multiple=4)
    assert bt.pad_id == expected
    batch = bt.collate(bt.tokenize(["up", "up down down"]), [0, 1])
    # Real tokens keep their ids; every masked position holds the pad id (and padding stays off in the
    # wrapped tokenizer: it is done here, to the bucket).
    assert batch.input_ids[0].tolist() == [vocab["up"], expected, expected, expected]
    assert batch.attention_mask[0].tolist() == [1, 0, 0, 0]
    assert bt.tokenize(["up"]).ids == [[vocab["up"]]]
