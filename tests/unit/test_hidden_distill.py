"""Hidden-state distillation: layer pairing, token alignment across tokenizers, the loss, and a short run."""

from __future__ import annotations

import csv
import hashlib
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from engine.modeling import MultiHeadClassifier, load_model
from engine.tokenize import BatchTokenizer
from tests.support.tiny_bert import (
    DEFAULT_HEADS,
    SPECIALS,
    build_vocab,
    make_tiny_encoder,
    tiny_train_settings,
    write_tokenizer,
)
from training.distill import DistillError
from training.hidden_distill import (
    HiddenDistiller,
    aligned_rows,
    check_alignment,
    layer_map,
)
from training.settings import TrainSettings
from training.train import TrainingError, train

WORDS = "apple tesla oil fed rates cut guidance beats misses shares fall rise bank merger deal dividend".split()


def _texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.sample(WORDS, rng.randint(3, 7))) for _ in range(n)]


def _teacher(out: Path, vocab: list[str], hidden: int = 48, layers: int = 4) -> Path:
    """A tiny finpulse checkpoint, wider and deeper than the student, with its own vocabulary file."""
    from transformers import BertModel

    enc = make_tiny_encoder(out.parent / f"{out.name}-encoder", [], seed=5, hidden=hidden, layers=layers, vocab=vocab)
    model = MultiHeadClassifier(BertModel.from_pretrained(str(enc), add_pooling_layer=False), DEFAULT_HEADS)
    model.save_pretrained(out, extra_config={"finpulse_model_id": f"tiny-teacher-{out.name}"})
    write_tokenizer(out, vocab)
    return out


def _reordered(vocab: list[str]) -> list[str]:
    # The same pieces under other ids (as MPNet holds BERT's WordPiece pieces under shifted ids).
    rest = [v for v in vocab if v not in SPECIALS]
    return [*reversed(rest[: len(rest) // 2]), *SPECIALS, *rest[len(rest) // 2 :]]


def _chars_only(vocab: list[str]) -> list[str]:
    # No whole words: every word is cut into characters, so no row lines up with the student's pieces.
    return [v for v in vocab if v in SPECIALS or len(v.removeprefix("##")) == 1]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("hidden-distill")
    train_s, valid_s, train_t, valid_t = _texts(48, 1), _texts(12, 2), _texts(40, 3), _texts(10, 4)
    for name, texts, classes in (
        ("sentiment_train", train_s, 3),
        ("sentiment_valid", valid_s, 3),
        ("topic_train", train_t, 20),
        ("topic_valid", valid_t, 20),
    ):
        with open(d / f"{name}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(("text", "label"))
            w.writerows((t, i % classes) for i, t in enumerate(texts))
    corpus = [*train_s, *valid_s, *train_t, *valid_t]
    make_tiny_encoder(d / "base", corpus)
    vocab = build_vocab(corpus)
    _teacher(d / "teacher", _reordered(vocab))
    _teacher(d / "chars-teacher", _chars_only(vocab))
    return d


def _settings(d: Path, **kw: Any) -> TrainSettings:
    return tiny_train_settings(d, **kw)


def test_layer_map_spreads_the_student_over_the_teacher() -> None:
    assert layer_map(6, 12) == [(i, 2 * i) for i in range(1, 7)]
    assert layer_map(3, 3) == [(1, 1), (2, 2), (3, 3)]
    pairs = layer_map(4, 10)
    assert [s for s, _ in pairs] == [1, 2, 3, 4]
    assert pairs[-1][1] == 10  # the last student layer always learns the teacher's last
    assert all(a[1] < b[1] for a, b in zip(pairs, pairs[1:], strict=False))
    with pytest.raises(ValueError):
        layer_map(0, 12)


def test_rows_align_when_the_pieces_match_whatever_the_ids(data: Path) -> None:
    texts = _texts(30, 9)
    student = BatchTokenizer.from_model_dir(data / "base", max_seq_len=32)
    same = BatchTokenizer.from_model_dir(data / "teacher", max_seq_len=32)
    chars = BatchTokenizer.from_model_dir(data / "chars-teacher", max_seq_len=32)
    s_tok, t_tok, c_tok = student.tokenize(texts), same.tokenize(texts), chars.tokenize(texts)
    assert s_tok.ids != t_tok.ids  # other ids ...
    assert aligned_rows(student, s_tok, same, t_tok).all()  # ... for the same pieces
    assert not aligned_rows(student, s_tok, chars, c_tok).any()
    # One row cut differently (another text in its place) is the only one left out.
    mixed = chars.tokenize(texts[:1]).ids + t_tok.ids[1:]
    from engine.tokenize import TokenizedTexts

    mixed_tok = TokenizedTexts(ids=mixed, lengths=np.asarray([len(i) for i in mixed]))
    got = aligned_rows(student, s_tok, same, mixed_tok)
    assert not got[0] and got[1:].all()
    check_alignment(got, "sentiment", data / "teacher")
    with pytest.raises(DistillError, match="cuts only 0%"):
        check_alignment(aligned_rows(student, s_tok, chars, c_tok), "sentiment", data / "chars-teacher")


def test_teacher_collate_lines_up_with_the_student_batch(data: Path) -> None:
    texts = _texts(5, 11)
    student = BatchTokenizer.from_model_dir(data / "base", max_seq_len=32, pad_multiple=8)
    teacher = BatchTokenizer.from_model_dir(data / "teacher", max_seq_len=32, pad_multiple=8)
    s_tok, t_tok = student.tokenize(texts), teacher.tokenize(texts)
    idx = np.asarray([3, 0, 4])
    batch = student.collate(s_tok, idx)
    t_batch = teacher.collate(t_tok, idx, length=batch.seq_len)
    ids, mask = t_batch.input_ids, t_batch.attention_mask
    assert ids.shape == batch.input_ids.shape
    assert (mask == batch.attention_mask).all()
    for row, i in enumerate(idx):
        assert list(ids[row, : len(t_tok.ids[i])]) == t_tok.ids[i]
    # A length below a text's own cuts it (a row the two tokenizers cut differently may be longer).
    cut = teacher.collate(t_tok, idx, length=3)
    assert cut.input_ids.shape == (3, 3) and cut.attention_mask.all()
    assert [list(r) for r in cut.input_ids] == [t_tok.ids[i][:3] for i in idx]


@torch.no_grad()  # the maps' gradients are not under test here
def test_loss_is_zero_on_a_perfect_map_and_ignores_rows_left_out(data: Path) -> None:
    teacher = load_model(data / "teacher").model
    student = load_model(data / "teacher").model  # same widths, so an identity map can be exact
    distiller = HiddenDistiller(teacher, student)
    for proj in distiller.maps:
        torch.nn.init.eye_(proj.weight)
        torch.nn.init.zeros_(proj.bias)
    tok = BatchTokenizer.from_model_dir(data / "teacher", max_seq_len=32)
    b = tok.collate(tok.tokenize(_texts(4, 12)), np.arange(4))
    ids, mask = torch.from_numpy(b.input_ids), torch.from_numpy(b.attention_mask)
    states = distiller.teacher_states(ids, mask)
    rows = torch.tensor([True, True, False, True])
    assert float(distiller.loss(states, states, mask, rows)) == pytest.approx(0.0, abs=1e-9)
    noisy = tuple(s + torch.randn_like(s) for s in states)
    hurt = float(distiller.loss(noisy, states, mask, rows))
    assert hurt > 0.01
    # Noise on a row left out changes nothing.
    only_row_2 = tuple(s.clone() for s in states)
    for s in only_row_2:
        s[2] += 5.0
    assert float(distiller.loss(only_row_2, states, mask, rows)) == pytest.approx(0.0, abs=1e-9)
    assert float(distiller.loss(noisy, states, mask, torch.zeros(4, dtype=torch.bool))) == 0.0
    # The teacher is frozen and not among the distiller's parameters.
    assert not any(p.requires_grad for p in teacher.parameters())
    assert sum(p.numel() for p in distiller.parameters()) == sum(p.numel() for p in distiller.maps.parameters())


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_a_run_learns_from_the_teachers_states_and_leaves_it_unchanged(data: Path, tmp_path: Path) -> None:
    teacher_weights = _sha(data / "teacher" / "model.safetensors")
    plain = train(_settings(data), tmp_path / "plain")
    hidden = train(_settings(data, hidden_teacher=data / "teacher"), tmp_path / "hidden")
    report = hidden.metrics["hidden_distillation"]
    assert report["aligned_share"] == {"sentiment": 1.0, "topic": 1.0}
    assert [tuple(p) for p in report["layers"]] == layer_map(2, 4)
    assert plain.metrics["hidden_distillation"] is None
    assert hidden.metrics["history"][-1]["hidden_loss"] > 0
    assert "hidden_loss" not in plain.metrics["history"][-1]
    assert hidden.metrics["config_hash"] != plain.metrics["config_hash"]
    assert _sha(data / "teacher" / "model.safetensors") == teacher_weights
    # Same seed and batches: only the hidden loss can have moved the student's encoder elsewhere.
    a = load_model(tmp_path / "plain").model.state_dict()
    b = load_model(tmp_path / "hidden").model.state_dict()
    enc = [k for k in a if k.startswith("bert.encoder.")]
    assert any(not torch.equal(a[k], b[k]) for k in enc)
    assert report["teacher"] == "tiny-teacher-teacher"


def test_a_teacher_that_cuts_texts_otherwise_is_refused(data: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="cuts only"):
        train(_settings(data, hidden_teacher=data / "chars-teacher"), tmp_path / "out")
    with pytest.raises(TrainingError, match="R-Drop"):
        train(_settings(data, hidden_teacher=data / "teacher", rdrop_alpha=1.0), tmp_path / "out2")
