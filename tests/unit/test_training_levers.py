"""Domain-adaptive pretraining: the corpus never holds a validation text, and the adapted encoder fine-tunes."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.support.tiny_bert import make_tiny_encoder
from training.dapt import build_corpus, pretrain
from training.data import load_task_data
from training.distill import distillation_loss, rdrop_loss, teacher_probabilities
from training.overlap import exclude_validation, normalise_text, shingles
from training.selftrain import unlabelled_pool
from training.settings import TrainSettings
from training.train import (
    PRETRAIN_FILE,
    TrainingError,
    batch_stream,
    length_grouped_batches,
    load_splits,
    row_probabilities,
    train,
    unseen_reports,
)

WORDS = (
    "apple tesla oil fed rates cut raise guidance beats misses shares fall rise bank merger deal ipo "
    "dividend outlook target analyst upgrade downgrade bond yield crude gold china tariff earnings"
).split()


def _write(path: Path, header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _jaccard(a: str, b: str) -> float:
    x, y = shingles(normalise_text(a)), shingles(normalise_text(b))
    return len(x & y) / len(x | y) if x | y else 0.0


def test_normalised_form_ignores_case_links_and_retweet_prefix() -> None:
    a = "RT @trader: $AAPL Beats Estimates!! https://t.co/xyz"
    b = "$aapl beats estimates"
    assert normalise_text(a) == normalise_text(b) == "$aapl beats estimates"
    assert normalise_text("$AAPL misses estimates") != normalise_text(b)


def test_exact_and_near_copies_of_validation_texts_are_left_out() -> None:
    validation = ["Mizuho cuts XLNX target on near-term headwinds", "Fed holds rates steady, signals two cuts"]
    corpus = [
        "MIZUHO cuts xlnx target on near-term headwinds https://t.co/abc",  # exact after normalising
        "$XLNX - Mizuho cuts XLNX target on near-term headwinds https://t.co/def",  # the feed's ticker prefix
        "Fed holds rates steady",  # shares words, but most of the validation text is missing
        "Crude rallies as OPEC extends cuts",
    ]
    ex = exclude_validation(corpus, validation, threshold=0.7)
    assert ex.exact == 1
    assert ex.near == 1
    assert ex.kept == corpus[2:]
    assert ex.examples[0][1] == validation[0]


def test_no_kept_text_is_near_any_validation_text_brute_force() -> None:
    # Random short texts with edited copies of validation texts at every distance: LSH must not
    # let one through that the exact shingle Jaccard would stop, and must not stop one it lets pass.
    rng = random.Random(7)
    validation = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 12))) for _ in range(60)]
    corpus = []
    for v in validation:
        words = v.split()
        for edits in range(4):
            w = list(words)
            for _ in range(edits):
                w[rng.randrange(len(w))] = rng.choice(WORDS)
            corpus.append(" ".join(w) + rng.choice(["", " https://t.co/q", " !!"]))
    corpus += [" ".join(rng.choice(WORDS) for _ in range(8)) for _ in range(100)]
    threshold = 0.6
    ex = exclude_validation(corpus, validation, threshold)
    kept = set(ex.kept)
    for text in corpus:
        near = max(_jaccard(text, v) for v in validation) >= threshold
        exact = normalise_text(text) in {normalise_text(v) for v in validation}
        assert (text not in kept) == (near or exact), text
    assert ex.exact + ex.near == len(corpus) - len(ex.kept) > 0


@pytest.fixture(scope="module")
def dapt_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("dapt-data")
    rng = random.Random(3)
    tweets = [f"${rng.choice(['AAPL', 'TSLA', 'XOM'])} {' '.join(rng.sample(WORDS, 6))}" for _ in range(150)]
    sent_valid = ["apple shares fall after guidance misses", "analyst upgrade lifts tesla target"]
    topic_valid = ["fed rates cut signals dovish outlook"]
    # The stream repeats a tweet verbatim (one row per ticker) and carries a validation headline.
    stream = [*tweets, tweets[0], f"RT @news: {sent_valid[0].upper()} https://t.co/z"]
    _write(d / "stream.csv", ("created_at", "ticker", "text"), [("2014-01-01T00:00:00Z", "X", t) for t in stream])
    # A training file that holds a near copy of a validation text (the feed's "$TICKER - " prefix).
    _write(
        d / "sentiment_train.csv",
        ("text", "label"),
        [("$TSLA - analyst upgrade lifts tesla target", 1), *[(t, i % 3) for i, t in enumerate(tweets[:30])]],
    )
    _write(d / "sentiment_valid.csv", ("text", "label"), [(t, 0) for t in sent_valid])
    headlines = [" ".join(rng.sample(WORDS, 7)) for _ in range(30)]  # text found only in a training file
    _write(d / "topic_train.csv", ("text", "label"), [(t, 4) for t in headlines])
    _write(d / "topic_valid.csv", ("text", "label"), [(t, 1) for t in topic_valid])
    make_tiny_encoder(d / "base", [*tweets, *headlines, *sent_valid, *topic_valid])
    return d


def _settings(d: Path, **kw: Any) -> TrainSettings:
    defaults: dict[str, Any] = {
        "base_dir": d / "base",
        "data_dir": None,
        "pretrain_corpus": d / "stream.csv",
        "sentiment_train": d / "sentiment_train.csv",
        "sentiment_valid": d / "sentiment_valid.csv",
        "topic_train": d / "topic_train.csv",
        "topic_valid": d / "topic_valid.csv",
        "max_seq_len": 32,
        "progress": False,
        "num_threads": 1,
        "precision": "fp32",
    }
    return TrainSettings(**{**defaults, **kw})


def test_corpus_holds_no_validation_text_and_no_repeats(dapt_data: Path) -> None:
    corpus = build_corpus(_settings(dapt_data))
    valid = {
        normalise_text(r[0])
        for f in ("sentiment_valid.csv", "topic_valid.csv")
        for r in list(csv.reader((dapt_data / f).read_text().splitlines()))[1:]
    }
    norms = [normalise_text(t) for t in corpus.texts]
    assert not valid & set(norms)
    assert len(norms) == len(set(norms))
    assert corpus.exclusion.exact == 1  # the retweeted headline
    assert corpus.exclusion.near == 1  # the prefixed training row
    assert corpus.duplicates >= 1
    # The task texts come in only when asked for.
    without = build_corpus(_settings(dapt_data, pretrain_task_texts=False))
    assert list(without.sources) == [f"{dapt_data.name}/stream.csv"]
    assert len(without.texts) < len(corpus.texts)


@pytest.mark.slow
def test_pretraining_lowers_held_out_loss_and_the_encoder_fine_tunes(dapt_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "adapted"
    report = pretrain(
        _settings(dapt_data, pretrain_steps=60, pretrain_batch_size=16, pretrain_lr=3e-3, pretrain_holdout=20), out
    )
    loss = report["held_out_mlm_loss"]
    assert loss["after"] < loss["before"]
    assert json.loads((out / PRETRAIN_FILE).read_text())["corpus"]["excluded_validation_exact"] == 1
    assert (out / "tokenizer.json").is_file()
    # The adapted directory is a base encoder like any other.
    result = train(_settings(dapt_data, base_dir=out, max_steps=5, batch_size=8, evals_per_epoch=0), tmp_path / "m")
    assert set(result.metrics["heads"]) == {"sentiment", "topic"}
    assert "masked-LM" in (tmp_path / "m" / "MODEL_CARD.md").read_text()


def test_validation_rows_copied_from_training_are_scored_apart(dapt_data: Path) -> None:
    splits = load_splits(_settings(dapt_data, calibration_fraction=0.0))
    sent = next(sp for sp in splits if sp.task == "sentiment")
    assert sent.valid is not None
    # Logits that get every row right: the unseen score is then 1 on whatever rows remain.
    logits = np.eye(len(sent.valid.labels), dtype=np.float32)[sent.valid.label_ids]
    rep = unseen_reports(splits, {"sentiment": logits})
    assert set(rep) == {"sentiment"}  # no logits were given for topic
    # One of the two validation headlines has a prefixed copy in the training file.
    assert rep["sentiment"]["copies"] == {"exact": 0, "near": 1}
    assert rep["sentiment"]["n"] == len(sent.valid) - 1
    assert rep["sentiment"]["accuracy"] == 1.0


def test_a_base_without_weights_is_a_training_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(TrainingError, match="no weights"):
        pretrain(TrainSettings(base_dir=tmp_path, data_dir=None, progress=False), tmp_path / "out")
    with pytest.raises(TrainingError, match="no weights"):
        train(TrainSettings(base_dir=tmp_path, data_dir=None, progress=False), tmp_path / "out")


@pytest.mark.slow
def test_a_student_learns_from_teachers_and_shares_their_pass(dapt_data: Path, tmp_path: Path) -> None:
    teacher = train(_settings(dapt_data, max_steps=30, batch_size=8, lr=3e-3, evals_per_epoch=0), tmp_path / "t")
    cache = tmp_path / "cache"
    kw: dict[str, Any] = {"max_steps": 10, "batch_size": 8, "evals_per_epoch": 0, "teacher_cache_dir": cache}
    student = train(_settings(dapt_data, teachers=[teacher.out_dir], **kw), tmp_path / "s")
    assert student.metrics["distillation"]["teachers"] == [
        json.loads((teacher.out_dir / "config.json").read_text())["finpulse_model_id"]
    ]
    assert "distilled from 1 teacher" in (tmp_path / "s" / "MODEL_CARD.md").read_text()
    written = sorted(cache.iterdir())
    assert [p.name.split("-")[0] for p in written] == ["sentiment", "topic"]
    # The teachers' probabilities: one row per distinct text of the training file, each summing to one.
    probs = np.load(written[0])
    assert probs.shape[0] == len(set(load_task_data(dapt_data / "sentiment_train.csv", "sentiment").texts))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    # A second student (another seed) reuses them, and distilling is part of the model's identity.
    again = train(_settings(dapt_data, teachers=[teacher.out_dir], seed=14, **kw), tmp_path / "s2")
    assert sorted(cache.iterdir()) == written
    plain = train(_settings(dapt_data, **{k: v for k, v in kw.items() if k != "teacher_cache_dir"}), tmp_path / "p")
    assert plain.metrics["distillation"] is None
    assert plain.metrics["config_hash"] != student.metrics["config_hash"]
    assert again.metrics["config_hash"] != student.metrics["config_hash"]


@pytest.mark.slow
def test_an_ensemble_reuses_each_members_own_pass(dapt_data: Path, tmp_path: Path) -> None:
    kw: dict[str, Any] = {"max_steps": 20, "batch_size": 8, "lr": 3e-3, "evals_per_epoch": 0}
    t1 = train(_settings(dapt_data, **kw), tmp_path / "t1").out_dir
    t2 = train(_settings(dapt_data, seed=14, **kw), tmp_path / "t2").out_dir
    texts = load_task_data(dapt_data / "sentiment_train.csv", "sentiment").texts
    labels = ("negative", "neutral", "positive")
    cache = tmp_path / "cache"
    args: dict[str, Any] = {"max_seq_len": 32, "cache_dir": cache}
    alone = teacher_probabilities([t1], "sentiment", labels, texts, **args)
    (first,) = cache.iterdir()
    # Replace t1's cached pass with something it could not have produced: the ensemble must read it back.
    marker = np.full_like(alone, 1.0 / len(labels))
    np.save(first, marker)
    fresh_t2 = teacher_probabilities([t2], "sentiment", labels, texts, max_seq_len=32)
    both = teacher_probabilities([t1, t2], "sentiment", labels, texts, **args)
    np.testing.assert_allclose(both, (marker + fresh_t2) / 2, atol=1e-6)
    # Three files: t1 alone, t2 alone (written by the ensemble), and the ensemble's mean.
    assert len(list(cache.iterdir())) == 3
    np.testing.assert_allclose(teacher_probabilities([t2], "sentiment", labels, texts, **args), fresh_t2, atol=1e-7)
    assert len(list(cache.iterdir())) == 3


def test_a_teacher_without_the_head_is_refused(dapt_data: Path, tmp_path: Path) -> None:
    only_sentiment = train(
        _settings(dapt_data, topic_train=None, topic_valid=None, max_steps=2, batch_size=8, evals_per_epoch=0),
        tmp_path / "t",
    )
    with pytest.raises(TrainingError, match="no 'topic' head"):
        train(_settings(dapt_data, teachers=[only_sentiment.out_dir], max_steps=2, batch_size=8), tmp_path / "s")


def test_no_scheduled_validation_just_before_the_final_one(dapt_data: Path, tmp_path: Path) -> None:
    kw: dict[str, Any] = {"batch_size": 4, "evals_per_epoch": 1, "calibration_fraction": 0.0, "patience": 50}
    probe = train(_settings(dapt_data, max_steps=1, **kw), tmp_path / "probe")
    every = probe.metrics["steps_per_epoch"]
    assert every >= 8  # enough steps for a quarter interval to mean something
    near_end = train(_settings(dapt_data, max_steps=every + 1, **kw), tmp_path / "a")
    assert [h["step"] for h in near_end.metrics["history"]] == [every + 1]
    two = train(_settings(dapt_data, max_steps=2 * every, **kw), tmp_path / "b")
    assert [h["step"] for h in two.metrics["history"]] == [every, 2 * every]


def test_distillation_loss_is_a_weighted_kl() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    target = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    even = distillation_loss(logits, target, torch.ones(2))
    expected = torch.nn.functional.kl_div(torch.log_softmax(logits, -1), target, reduction="batchmean")
    torch.testing.assert_close(even, expected)
    # The second row is much further from its target: weighting it up raises the loss, down lowers it.
    assert distillation_loss(logits, target, torch.tensor([1.0, 3.0])) > even
    assert distillation_loss(logits, target, torch.tensor([3.0, 1.0])) < even
    assert float(distillation_loss(torch.log(target), target, torch.tensor([1.0, 5.0]))) == pytest.approx(0.0, abs=1e-6)


def test_the_self_training_pool_holds_no_validation_text_and_does_not_move_with_the_seed(dapt_data: Path) -> None:
    validation = [
        *load_task_data(dapt_data / "sentiment_valid.csv", "sentiment").texts,
        *load_task_data(dapt_data / "topic_valid.csv", "topic").texts,
    ]
    pool, counts = unlabelled_pool(dapt_data / "stream.csv", validation, size=40, near_copy=0.7)
    assert len(pool) == counts["pool"] == 40
    assert counts["distinct"] == counts["read"] - 1  # the verbatim repeat
    everything, all_counts = unlabelled_pool(dapt_data / "stream.csv", validation, size=10_000, near_copy=0.7)
    assert all_counts["validation_copies_left_out"] == 1  # the retweeted validation headline
    assert not {normalise_text(v) for v in validation} & {normalise_text(t) for t in everything}
    # Fixed sampling: the same pool again, and a sample from the whole file rather than its first rows.
    assert unlabelled_pool(dapt_data / "stream.csv", validation, size=40, near_copy=0.7)[0] == pool
    assert set(pool) <= set(everything)
    file_order = [r[2] for r in list(csv.reader((dapt_data / "stream.csv").read_text().splitlines()))[1:]]
    assert set(pool) != set(file_order[:40])


def test_self_training_without_teachers_is_refused(dapt_data: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="needs teachers"):
        train(_settings(dapt_data, self_train=True, self_train_corpus=dapt_data / "stream.csv"), tmp_path / "s")


@pytest.mark.slow
def test_self_training_adds_the_confident_rows_to_the_named_head(dapt_data: Path, tmp_path: Path) -> None:
    teacher = train(_settings(dapt_data, max_steps=30, batch_size=8, lr=3e-3, evals_per_epoch=0), tmp_path / "t")
    kw: dict[str, Any] = {
        "max_steps": 6,
        "batch_size": 8,
        "evals_per_epoch": 0,
        "calibration_fraction": 0.0,
        "teachers": [teacher.out_dir],
        "distill_weight": 0.0,
        "self_train": True,
        "self_train_corpus": dapt_data / "stream.csv",
        "teacher_cache_dir": tmp_path / "cache",
    }
    # Three classes: the top probability is always at least 1/3, so a threshold of 0.3 keeps every row.
    every = train(_settings(dapt_data, self_train_threshold=0.3, **kw), tmp_path / "every")
    rep = every.metrics["self_training"]["sentiment"]
    gold = len(load_task_data(dapt_data / "sentiment_train.csv", "sentiment"))
    assert rep["kept"] == rep["scored"] == rep["pool"] > 0
    assert sum(rep["per_class"].values()) == rep["kept"]
    assert every.metrics["data"]["sentiment"]["train_rows"] == gold + rep["kept"]
    assert every.metrics["data"]["topic"]["train_rows"] == len(load_task_data(dapt_data / "topic_train.csv", "topic"))
    assert set(every.metrics["self_training"]) == {"sentiment"}
    assert every.metrics["distillation"] is None  # weight 0: the teachers only label
    assert "self-training on sentiment" in (tmp_path / "every" / "MODEL_CARD.md").read_text()
    # A stricter threshold keeps a subset of the same pass (the cache is reused), and is another model.
    strict = train(_settings(dapt_data, self_train_threshold=0.6, **kw), tmp_path / "strict")
    rep2 = strict.metrics["self_training"]["sentiment"]
    assert rep2["scored"] == rep["scored"]
    assert rep2["kept"] <= rep["kept"]
    assert len(list((tmp_path / "cache").iterdir())) == 1
    assert strict.metrics["config_hash"] != every.metrics["config_hash"]


def test_rdrop_loss_is_a_symmetric_kl_that_vanishes_only_for_equal_predictions() -> None:
    a = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    b = torch.tensor([[0.0, 2.0, -1.0], [0.0, 1.0, 0.5]])
    ab = rdrop_loss(a, b)
    torch.testing.assert_close(ab, rdrop_loss(b, a))
    pa, pb = torch.softmax(a, -1), torch.softmax(b, -1)
    by_hand = 0.5 * ((pa * (pa / pb).log()).sum(-1) + (pb * (pb / pa).log()).sum(-1)).mean()
    torch.testing.assert_close(ab, by_hand)
    assert float(ab) > 0
    assert float(rdrop_loss(a, a + 3.0)) == pytest.approx(0.0, abs=1e-6)  # the same softmax


def test_rdrop_trains_and_is_part_of_the_model_identity_only_when_on(dapt_data: Path, tmp_path: Path) -> None:
    kw: dict[str, Any] = {"max_steps": 3, "batch_size": 8, "evals_per_epoch": 0}
    assert "rdrop_alpha" not in _settings(dapt_data, **kw).hyperparameters()
    on = train(_settings(dapt_data, rdrop_alpha=1.0, **kw), tmp_path / "on")
    off = train(_settings(dapt_data, **kw), tmp_path / "off")
    assert on.metrics["hyperparameters"]["rdrop_alpha"] == 1.0
    assert on.metrics["config_hash"] != off.metrics["config_hash"]
    assert np.isfinite(on.metrics["score"])


def test_class_sampling_draws_each_class_as_often_as_asked() -> None:
    labels = np.asarray([0] * 90 + [1] * 9 + [2] * 1)
    assert row_probabilities(labels, 3, "none") is None
    for mode, expected in (("balanced", np.ones(3) / 3), ("weighted", np.sqrt([90, 9, 1]) / np.sqrt([90, 9, 1]).sum())):
        p = row_probabilities(labels, 3, mode)
        assert p is not None and p.sum() == pytest.approx(1.0)
        np.testing.assert_allclose(np.bincount(labels, weights=p, minlength=3), expected)
        # Drawn over many passes, the batches hold the classes in those shares.
        stream = batch_stream(np.full(labels.size, 8), 16, np.random.default_rng(0), p)
        drawn = np.concatenate([next(stream) for _ in range(2000)])
        np.testing.assert_allclose(np.bincount(labels[drawn], minlength=3) / drawn.size, expected, atol=0.02)
    # Without sampling a pass is every row once; with it, exactly the rows drawn, repeats included.
    lengths = np.random.default_rng(1).integers(4, 30, labels.size)
    once = np.concatenate(length_grouped_batches(lengths, 16, np.random.default_rng(2)))
    assert sorted(once.tolist()) == list(range(labels.size))
    rows = np.asarray([99] * 40 + list(range(60)))
    batches = length_grouped_batches(lengths, 16, np.random.default_rng(3), rows)
    assert sorted(np.concatenate(batches).tolist()) == sorted(rows.tolist())
    assert all(b.size <= 16 for b in batches)


def test_class_sampling_trains_and_is_part_of_the_model_identity_only_when_on(dapt_data: Path, tmp_path: Path) -> None:
    kw: dict[str, Any] = {"max_steps": 3, "batch_size": 8, "evals_per_epoch": 0}
    assert "class_sampling" not in _settings(dapt_data, **kw).hyperparameters()
    on = train(_settings(dapt_data, class_sampling="balanced", class_weighting="none", **kw), tmp_path / "on")
    off = train(_settings(dapt_data, class_weighting="none", **kw), tmp_path / "off")
    assert on.metrics["hyperparameters"]["class_sampling"] == "balanced"
    assert on.metrics["config_hash"] != off.metrics["config_hash"]
    assert np.isfinite(on.metrics["score"])
