"""Training, evaluation and data loading on a tiny BERT and a few dozen hand-written rows (CPU, seconds)."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from engine.modeling import (
    CONFIG_HEADS_KEY,
    SENTIMENT_LABELS,
    HeadSpec,
    load_model,
    new_multihead_model,
)
from engine.runtime import load_classifier
from engine.settings import EngineSettings
from engine.tokenize import BatchTokenizer
from tests.support.tiny_bert import make_tiny_encoder
from training.data import (
    SENTIMENT_MAP,
    TOPIC_LABELS,
    TOPIC_MAP,
    DataError,
    label_map_for,
    load_for_heads,
    load_task_data,
    read_records,
)
from training.metrics import classification_report
from training.settings import TrainSettings
from training.train import class_weights, task_probabilities, train

# --- synthetic data: words that make each class learnable by a tiny model in a few dozen steps -----

SENT_WORDS = {  # twitter-financial-news ids: 0 Bearish, 1 Bullish, 2 Neutral
    "0": ["plunges", "crashes", "slumps", "tumbles"],
    "1": ["soars", "rallies", "jumps", "surges"],
    "2": ["schedules", "hosts", "announces", "files"],
}
TOPIC_WORDS = {  # a few topic ids are enough; the head still has all 20 outputs
    "4": ["dividend", "payout"],
    "6": ["oil", "crude"],
    "1": ["fed", "powell"],
    "11": ["ipo", "listing"],
}
TICKERS = ["$AAPL", "$TSLA", "$XOM", "$JPM", "$MSFT", "$AMZN"]


def _rows(words: dict[str, list[str]], n_per_class: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows = []
    for label, ws in words.items():
        for _ in range(n_per_class):
            rows.append(
                (f"{rng.choice(TICKERS)} {rng.choice(ws)} today {rng.choice(['again', 'now', 'early'])}", label)
            )
    rng.shuffle(rows)
    return rows


def _write_csv(path: Path, rows: list[tuple[Any, ...]], header: tuple[str, ...] = ("text", "label")) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("train-data")
    _write_csv(d / "sentiment_train.csv", _rows(SENT_WORDS, 12, 1))
    _write_csv(d / "sentiment_valid.csv", _rows(SENT_WORDS, 4, 2))
    _write_csv(d / "topic_train.csv", _rows(TOPIC_WORDS, 8, 3))
    _write_csv(d / "topic_valid.csv", _rows(TOPIC_WORDS, 3, 4))
    return d


@pytest.fixture(scope="module")
def base_dir(data_dir: Path) -> Path:
    corpus = [r[0] for f in data_dir.glob("*.csv") for r in csv.reader(f.read_text().splitlines())]
    return make_tiny_encoder(data_dir / "base", corpus)


def _settings(data_dir: Path, base_dir: Path, **kw: Any) -> TrainSettings:
    defaults: dict[str, Any] = {
        "base_dir": base_dir,
        "data_dir": None,
        "sentiment_train": data_dir / "sentiment_train.csv",
        "sentiment_valid": data_dir / "sentiment_valid.csv",
        "topic_train": data_dir / "topic_train.csv",
        "topic_valid": data_dir / "topic_valid.csv",
        "max_steps": 80,
        "batch_size": 8,
        "lr": 3e-3,
        "max_seq_len": 32,
        "evals_per_epoch": 1,
        "patience": 50,
        "progress": False,
        "num_threads": 1,
    }
    return TrainSettings(**{**defaults, **kw})


@pytest.fixture(scope="module")
def trained(data_dir: Path, base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    return train(_settings(data_dir, base_dir), tmp_path_factory.mktemp("out") / "model")


def _mean_loss(model: torch.nn.Module, base_dir: Path, path: Path, task: str, head_index: int) -> float:
    data = load_task_data(path, task)
    tok = BatchTokenizer.from_model_dir(base_dir, max_seq_len=32)
    enc = tok.collate(tok.tokenize(data.texts), np.arange(len(data)))
    model.eval()
    with torch.inference_mode():
        logits = model(torch.from_numpy(enc.input_ids), torch.from_numpy(enc.attention_mask))[head_index]
    return float(torch.nn.functional.cross_entropy(logits, torch.from_numpy(data.label_ids)))


# --- training -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_training_lowers_the_loss(trained: Any, data_dir: Path, base_dir: Path) -> None:
    torch.manual_seed(0)
    untrained = new_multihead_model(
        base_dir, [HeadSpec("sentiment", SENTIMENT_LABELS), HeadSpec("topic", TOPIC_LABELS)]
    )
    loaded = load_model(trained.out_dir).model
    for i, task in enumerate(("sentiment", "topic")):
        before = _mean_loss(untrained, base_dir, data_dir / f"{task}_train.csv", task, i)
        after = _mean_loss(loaded, base_dir, data_dir / f"{task}_train.csv", task, i)
        assert after < 0.6 * before, (task, before, after)
    assert np.mean(trained.loss_history[-10:]) < np.mean(trained.loss_history[:10])


@pytest.mark.slow
def test_saved_model_reloads_with_identical_predictions(trained: Any, data_dir: Path) -> None:
    texts = [r[0] for r in csv.reader((data_dir / "sentiment_valid.csv").read_text().splitlines())][1:] + [
        "$XOM crude payout fed"
    ]
    tok = BatchTokenizer.from_model_dir(trained.out_dir, max_seq_len=128)
    enc = tok.collate(tok.tokenize(texts), np.arange(len(texts)))
    ids, mask = torch.from_numpy(enc.input_ids), torch.from_numpy(enc.attention_mask)
    with torch.inference_mode():
        in_memory = [t.numpy() for t in trained.model.eval()(ids, mask)]
        reloaded = [t.numpy() for t in load_model(trained.out_dir).model(ids, mask)]
    probs = load_classifier(EngineSettings(backend="torch"), trained.out_dir).classify(texts)
    for i, head in enumerate(("sentiment", "topic")):
        np.testing.assert_allclose(reloaded[i], in_memory[i], atol=1e-5)
        # Served probabilities are the reloaded logits divided by the head's fitted temperature.
        temperature = load_model(trained.out_dir).heads[i].temperature
        expected = torch.softmax(torch.from_numpy(reloaded[i]) / temperature, -1).numpy()
        np.testing.assert_allclose(probs[head], expected, atol=1e-5)
        assert (probs[head].argmax(1) == in_memory[i].argmax(1)).all()


def test_label_maps_survive_the_round_trip(trained: Any) -> None:
    cfg = json.loads((trained.out_dir / "config.json").read_text())
    heads = {h["name"]: h for h in cfg[CONFIG_HEADS_KEY]}
    assert heads["sentiment"]["id2label"] == {"0": "negative", "1": "neutral", "2": "positive"}
    assert heads["topic"]["id2label"] == {str(i): lab for i, lab in enumerate(TOPIC_LABELS)}
    loaded = load_model(trained.out_dir)
    assert [(h.name, h.labels) for h in loaded.heads] == [("sentiment", SENTIMENT_LABELS), ("topic", TOPIC_LABELS)]
    clf = load_classifier(EngineSettings(backend="torch"), trained.out_dir)
    assert [h.labels for h in clf.heads] == [SENTIMENT_LABELS, TOPIC_LABELS]
    assert (trained.out_dir / "tokenizer.json").is_file()


def test_metrics_json_and_model_card(trained: Any) -> None:
    m = json.loads((trained.out_dir / "metrics.json").read_text())
    for key in ("heads", "steps", "wall_seconds", "hyperparameters", "device", "steps_per_second", "config_hash"):
        assert key in m
    assert m["steps"] == 80 and m["device"] == "cpu"
    for head, n_labels in (("sentiment", 3), ("topic", 20)):
        rep = m["heads"][head]
        assert set(rep) >= {"macro_f1", "accuracy", "per_class", "confusion_matrix"}
        assert len(rep["confusion_matrix"]) == n_labels
    # The keyword data is trivially separable: the tiny model must have learnt it.
    assert m["heads"]["sentiment"]["macro_f1"] > 0.8
    # Temperature scaling: fitted on held-out training rows, stored in config.json, reported with ECE.
    cfg_heads = {h["name"]: h for h in json.loads((trained.out_dir / "config.json").read_text())[CONFIG_HEADS_KEY]}
    for head in ("sentiment", "topic"):
        cal = m["calibration"][head]
        assert cal["rows"] == m["data"][head]["calibration_rows"] > 0
        assert cfg_heads[head]["temperature"] == pytest.approx(cal["temperature"])
        fit = cal["calibration_split"]
        # The fitted temperature minimises the NLL on the rows it was fitted on, so it cannot raise it;
        # it is served only when it does not raise their ECE either (else 1).
        assert fit["nll_after"] <= fit["nll_before"] + 1e-9
        assert fit["ece_after"] <= fit["ece_before"] + 1e-12
        assert cal["temperature"] in (1.0, cal["fitted_temperature"])
        assert {"ece_before", "ece_after"} <= set(cal["validation"])
    card = (trained.out_dir / "MODEL_CARD.md").read_text()
    assert "## Calibration" in card
    assert "MIT" in card and "Apache-2.0" in card and "macro-F1" in card


@pytest.mark.slow
def test_freeze_encoder_trains_heads_only(data_dir: Path, base_dir: Path, tmp_path: Path) -> None:
    res = train(
        _settings(data_dir, base_dir, freeze_encoder=True, max_steps=10, evals_per_epoch=0, limit=20), tmp_path / "m"
    )
    torch.manual_seed(0)
    fresh = new_multihead_model(base_dir, [HeadSpec("sentiment", SENTIMENT_LABELS)])
    for name, p in fresh.bert.state_dict().items():
        assert torch.equal(p, res.model.bert.state_dict()[name]), name
    assert res.metrics["steps"] == 10


def test_class_weights_and_task_mix() -> None:
    counts = np.array([10, 40, 0, 50])
    bal = class_weights(counts, "balanced")
    assert bal[0] / bal[1] == pytest.approx(4.0) and bal[2] == 1.0
    assert (bal * counts).sum() == pytest.approx(counts.sum())  # average weight per row is 1
    sq = class_weights(counts, "weighted")
    assert sq[0] / sq[1] == pytest.approx(2.0)
    assert (class_weights(counts, "none") == 1).all()
    assert task_probabilities("proportional", {"sentiment": 100, "topic": 300}) == {"sentiment": 0.25, "topic": 0.75}
    assert task_probabilities("uniform", {"sentiment": 100, "topic": 300}) == {"sentiment": 0.5, "topic": 0.5}
    assert task_probabilities("sentiment=1,topic=3", {"sentiment": 1, "topic": 1}) == {"sentiment": 0.25, "topic": 0.75}
    with pytest.raises(ValueError):
        task_probabilities("macro=1", {"sentiment": 1})


# --- evaluation -----------------------------------------------------------------------------------


def _hand_counts(y_true: list[int], y_pred: list[int], n: int) -> dict[str, Any]:
    """Per-class P/R/F1 by explicit counting (deliberately not using training.metrics)."""
    out: dict[str, Any] = {"per_class": [], "f1s_present": []}
    for c in range(n):
        tp = sum(1 for t, p in zip(y_true, y_pred, strict=True) if t == c and p == c)
        fp = sum(1 for t, p in zip(y_true, y_pred, strict=True) if t != c and p == c)
        fn = sum(1 for t, p in zip(y_true, y_pred, strict=True) if t == c and p != c)
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        out["per_class"].append((prec, rec, f1, tp + fn))
        if tp + fp + fn:
            out["f1s_present"].append(f1)
    out["macro_f1"] = sum(out["f1s_present"]) / len(out["f1s_present"])
    out["accuracy"] = sum(1 for t, p in zip(y_true, y_pred, strict=True) if t == p) / len(y_true)
    return out


def test_metrics_on_a_hand_made_example() -> None:
    y_true = [0, 0, 1, 1, 2, 2, 2]
    y_pred = [0, 1, 1, 1, 2, 0, 2]
    rep = classification_report(np.array(y_true), np.array(y_pred), ["a", "b", "c"])
    # class a: tp 1, fp 1, fn 1; b: tp 2, fp 1, fn 0; c: tp 2, fp 0, fn 1
    assert rep["per_class"]["a"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert rep["per_class"]["b"]["precision"] == pytest.approx(2 / 3) and rep["per_class"]["b"]["recall"] == 1.0
    assert rep["per_class"]["b"]["f1"] == pytest.approx(0.8) and rep["per_class"]["c"]["f1"] == pytest.approx(0.8)
    assert rep["macro_f1"] == pytest.approx(0.7)
    assert rep["accuracy"] == pytest.approx(5 / 7)
    assert rep["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 2]]


def test_evaluate_matches_an_independent_count(trained: Any, tmp_path: Path) -> None:
    from training.evaluate import evaluate

    # Mixed spellings on purpose: ids, Bearish/Bullish and head names all map to one label order.
    rows = [
        ("$AAPL plunges today", "Bearish"),
        ("$TSLA soars now", "1"),
        ("$JPM hosts meeting", "neutral"),
        ("$XOM slumps early", "0"),
        ("$MSFT jumps again", "positive"),
        ("$AMZN files report", "2"),
        ("$AAPL rallies but plunges", "negative"),
        ("$XOM schedules call", "Bullish"),
        ("fed crude payout", "Neutral"),
    ]
    data = _write_csv(tmp_path / "eval_sentiment.csv", rows)
    result = evaluate(trained.out_dir, data, json_out=tmp_path / "m.json", show=False)
    assert list(result["heads"]) == ["sentiment"]  # a sentiment-only file evaluates the sentiment head only

    probs = load_classifier(EngineSettings(backend="torch"), trained.out_dir).classify([r[0] for r in rows])[
        "sentiment"
    ]
    y_pred = [int(np.argmax(p)) for p in probs]  # head order: negative, neutral, positive
    by_name = {"bearish": 0, "negative": 0, "0": 0, "neutral": 1, "2": 1, "bullish": 2, "positive": 2, "1": 2}
    y_true = [by_name[lab.lower()] for _, lab in rows]
    expected = _hand_counts(y_true, y_pred, 3)
    rep = result["heads"]["sentiment"]
    for (prec, rec, f1, support), lab in zip(expected["per_class"], SENTIMENT_LABELS, strict=True):
        got = rep["per_class"][lab]
        assert got["precision"] == pytest.approx(prec) and got["recall"] == pytest.approx(rec)
        assert got["f1"] == pytest.approx(f1) and got["support"] == support
    assert rep["macro_f1"] == pytest.approx(expected["macro_f1"])
    assert rep["accuracy"] == pytest.approx(expected["accuracy"])
    cm = [
        [sum(1 for t, p in zip(y_true, y_pred, strict=True) if t == i and p == j) for j in range(3)] for i in range(3)
    ]
    assert rep["confusion_matrix"] == cm
    assert json.loads((tmp_path / "m.json").read_text())["heads"]["sentiment"]["macro_f1"] == pytest.approx(
        rep["macro_f1"]
    )


def test_evaluate_multi_column_file_and_jsonl(trained: Any, tmp_path: Path) -> None:
    from training.evaluate import evaluate

    both = _write_csv(
        tmp_path / "both.csv",
        [("$XOM crude jumps", "Bullish", "Energy / Oil"), ("fed powell hosts", "2", "1")],
        ("text", "sentiment", "topic"),
    )
    assert set(evaluate(trained.out_dir, both, show=False)["heads"]) == {"sentiment", "topic"}
    jl = tmp_path / "topics.jsonl"
    jl.write_text('{"text": "dividend payout raised", "label": 4}\n\n{"text": "ipo listing priced", "label": "IPO"}\n')
    res = evaluate(trained.out_dir, jl, task="topic", show=False)
    assert res["heads"]["topic"]["n"] == 2


def test_cli_evaluate_and_train(trained: Any, data_dir: Path, base_dir: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from training.cli import evaluate_cmd, train_cmd

    runner = CliRunner()
    ok = runner.invoke(
        evaluate_cmd,
        [
            str(trained.out_dir),
            "--data",
            str(data_dir / "sentiment_valid.csv"),
            "--task",
            "sentiment",
            "--json",
            str(tmp_path / "e.json"),
        ],
    )
    assert ok.exit_code == 0, ok.output
    assert "macro-F1" in ok.output and (tmp_path / "e.json").is_file()
    assert "numeric labels read as 0 negative, 1 positive, 2 neutral" in ok.output
    # The same rows with ids in another order (0 negative, 1 neutral, 2 positive, as other headline
    # sets number them) score the same once the order is given, and differently when it is not.
    original = load_task_data(data_dir / "sentiment_valid.csv", "sentiment")
    renumbered = _write_csv(
        tmp_path / "renumbered.csv",
        [
            (t, ("negative", "neutral", "positive").index(SENTIMENT_LABELS[i]))
            for t, i in zip(original.texts, original.label_ids, strict=True)
        ],
    )
    for extra, name in (([], "wrong.json"), (["--label-ids", "Bearish, neutral ,POSITIVE"], "right.json")):
        res = runner.invoke(
            evaluate_cmd,
            [
                str(trained.out_dir),
                "--data",
                str(renumbered),
                "--task",
                "sentiment",
                "--json",
                str(tmp_path / name),
                *extra,
            ],
        )
        assert res.exit_code == 0, res.output
    first, wrong, right = (
        json.loads((tmp_path / n).read_text())["heads"]["sentiment"] for n in ("e.json", "wrong.json", "right.json")
    )
    assert right["confusion_matrix"] == first["confusion_matrix"] and right["ids_read_as"] == [
        "negative",
        "neutral",
        "positive",
    ]
    assert wrong["confusion_matrix"] != first["confusion_matrix"]
    res = runner.invoke(
        evaluate_cmd, [str(trained.out_dir), "--data", str(renumbered), "--label-ids", "negative,neutral"]
    )
    assert res.exit_code != 0 and "--label-ids has 2 names" in res.output
    res = runner.invoke(
        evaluate_cmd,
        [str(trained.out_dir), "--data", str(renumbered), "--task", "sentiment", "--label-ids", "negative,neutral"],
    )
    assert res.exit_code != 0 and "need 3 label names" in res.output
    bad = _write_csv(tmp_path / "bad.csv", [("fine text", "2"), ("other", "Sideways")])
    res = runner.invoke(evaluate_cmd, [str(trained.out_dir), "--data", str(bad), "--task", "sentiment"])
    assert res.exit_code != 0 and f"{bad}:3" in res.output and "Sideways" in res.output

    args = [
        "--out",
        str(tmp_path / "cli-model"),
        "--base",
        str(base_dir),
        "--sentiment-train",
        str(data_dir / "sentiment_train.csv"),
        "--sentiment-valid",
        str(data_dir / "sentiment_valid.csv"),
        "--topic-train",
        str(data_dir / "topic_train.csv"),
        "--topic-valid",
        str(data_dir / "topic_valid.csv"),
        "--max-steps",
        "4",
        "--batch-size",
        "4",
        "--max-seq-len",
        "16",
        "--no-progress",
    ]
    res = runner.invoke(train_cmd, args)
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "cli-model" / "metrics.json").read_text())
    assert m["steps"] == 4 and m["hyperparameters"]["max_seq_len"] == 16


# --- data loading -----------------------------------------------------------------------------------


def test_sentiment_ids_follow_the_twitter_convention(tmp_path: Path) -> None:
    f = _write_csv(
        tmp_path / "s.csv", [("a", "0"), ("b", "1"), ("c", "2"), ("d", "Bearish"), ("e", "BULLISH"), ("f", "neutral")]
    )
    td = load_task_data(f, "sentiment")
    assert [SENTIMENT_LABELS[i] for i in td.label_ids] == [
        "negative",
        "positive",
        "neutral",
        "negative",
        "positive",
        "neutral",
    ]
    assert td.lines == [2, 3, 4, 5, 6, 7]
    assert SENTIMENT_MAP.encode(1) == 2 and TOPIC_MAP.encode(1) == 1 and TOPIC_MAP.encode("m&a / investments") == 13


@pytest.mark.parametrize(
    ("content", "line", "fragment"),
    [
        ('text,label\n"ok",0\n"fine",1\n"bad one",Sideways\n', 4, "unknown sentiment label 'Sideways'"),
        ('text,label\n"ok",0\n"  ",1\n', 3, "empty text"),
        ("sentence,sentiment\nhello,0\n", 1, "no 'text' column"),
        ("text\nhello\n", 1, "no label column"),
        ('text,label\n"ok",0\n"multi\nline",1\n"too",1,extra\n', 5, "expected 2 fields"),
        ('text,label\n"ok",0\n"bad",7\n', 3, "unknown sentiment label '7'"),
    ],
)
def test_bad_csv_names_file_and_line(tmp_path: Path, content: str, line: int, fragment: str) -> None:
    f = tmp_path / "bad.csv"
    f.write_text(content)
    with pytest.raises(DataError) as err:
        load_task_data(f, "sentiment")
    assert err.value.path == f and err.value.line == line
    assert f"{f}:{line}" in str(err.value) and fragment in str(err.value)


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found"):
        load_task_data(tmp_path / "missing.csv", "sentiment")
    bin_csv = tmp_path / "latin.csv"
    bin_csv.write_bytes(b"text,label\nok,0\ncaf\xe9 down,0\n")
    with pytest.raises(DataError) as err:
        load_task_data(bin_csv, "sentiment")
    assert err.value.line == 3 and "UTF-8" in str(err.value)
    jl = tmp_path / "bad.jsonl"
    jl.write_text('{"text": "a", "label": 0}\n{"text": "b", "label": \n')
    with pytest.raises(DataError) as err:
        load_task_data(jl, "sentiment")
    assert err.value.line == 2 and "invalid JSON" in str(err.value)
    jl.write_text('{"text": "a", "label": 0}\n{"body": "b", "label": 1}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: no 'text' field"):
        load_task_data(jl, "sentiment")
    topic = _write_csv(tmp_path / "t.csv", [("x", "20")])
    with pytest.raises(DataError, match=r"t.csv:2: unknown topic label '20'"):
        load_task_data(topic, "topic")


def test_phrasebank_format_parses(tmp_path: Path) -> None:
    f = tmp_path / "Sentences_AllAgree.txt"
    f.write_bytes(
        b"Operating profit rose to EUR 13.1 mn from EUR 8.7 mn in 2007 .@positive\n"
        b"Caf\xe9 chain sales fell 5 % .@negative\n"
        b"\n"
        b"Contact investor@company.com for details .@neutral\n"
    )
    td = load_task_data(f, "sentiment")
    assert [SENTIMENT_LABELS[i] for i in td.label_ids] == ["positive", "negative", "neutral"]
    assert (
        td.texts[1] == "Caf\u00e9 chain sales fell 5 % ."
        and td.texts[2] == "Contact investor@company.com for details ."
    )
    assert td.lines == [1, 2, 4]
    # Without the .txt extension the format is sniffed.
    g = tmp_path / "phrasebank"
    g.write_bytes(f.read_bytes())
    assert len(read_records(g)) == 3
    f.write_bytes(b"Good quarter .@positive\nNo label here\n")
    with pytest.raises(DataError, match=r"Sentences_AllAgree.txt:2: expected 'sentence@label'"):
        load_task_data(f, "sentiment")
    f.write_bytes(b"Good quarter .@bullishish\n")
    with pytest.raises(DataError, match=r":1: unknown sentiment label"):
        load_task_data(f, "sentiment")


def test_numeric_ids_in_a_given_order() -> None:
    twitter = label_map_for("sentiment")
    assert twitter.id_names() == ("negative", "positive", "neutral")
    other = twitter.with_ids(["neg", "Neutral", "bullish"])
    assert [other.encode(i) for i in (0, "1", 2.0)] == [0, 1, 2] and other.encode("bearish") == 0
    assert other.id_names() == ("negative", "neutral", "positive")
    assert twitter.id_names() == ("negative", "positive", "neutral")  # the shared map is unchanged
    with pytest.raises(ValueError, match="names some label twice"):
        twitter.with_ids(["negative", "bearish", "positive"])
    with pytest.raises(ValueError, match="unknown sentiment label name '1'"):
        twitter.with_ids(["1", "neutral", "positive"])
    topic = label_map_for("topic")
    assert topic.with_ids(list(reversed(topic.labels))).encode(0) == len(topic.labels) - 1


def test_task_inference_for_evaluation(tmp_path: Path) -> None:
    heads = ["sentiment", "topic"]
    assert list(load_for_heads(_write_csv(tmp_path / "a.csv", [("x", "0"), ("y", "2")]), heads)) == ["sentiment"]
    assert list(load_for_heads(_write_csv(tmp_path / "b.csv", [("x", "0"), ("y", "17")]), heads)) == ["topic"]
    assert list(load_for_heads(_write_csv(tmp_path / "c.csv", [("x", "Earnings")]), heads)) == ["topic"]
    d = tmp_path / "twitter-financial-news-topic"
    d.mkdir()
    assert list(load_for_heads(_write_csv(d / "valid.csv", [("x", "0")]), heads)) == ["topic"]
    with pytest.raises(ValueError, match="no 'topic' head"):
        load_for_heads(tmp_path / "a.csv", ["sentiment"], task="topic")


# --- the cached default model ---------------------------------------------------------------------------


@pytest.mark.slow
def test_default_model_is_trained_once_then_cached(
    data_dir: Path, base_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import training.train as train_mod
    from training.default_model import MARKER, ensure_default_model, read_marker

    settings = _settings(data_dir, base_dir, max_steps=6, evals_per_epoch=0)
    cache = tmp_path / "models" / "default"
    assert ensure_default_model(cache, settings=settings, progress=False) == cache
    marker = read_marker(cache)
    assert marker is not None and marker["recipe"] == "custom" and (cache / MARKER).is_file()
    assert not list(cache.parent.glob(".default.tmp-*"))
    load_model(cache)

    def no_training(*a: Any, **k: Any) -> Any:
        raise AssertionError("the cached model should have been reused")

    monkeypatch.setattr(train_mod, "train", no_training)
    assert ensure_default_model(cache, settings=settings, progress=False) == cache
    # A different recipe is a different hash: it must retrain.
    with pytest.raises(AssertionError, match="reused"):
        ensure_default_model(
            cache, settings=_settings(data_dir, base_dir, max_steps=7, evals_per_epoch=0), progress=False
        )
    assert read_marker(cache) == marker  # a failed retrain leaves the old model intact


def test_default_model_training_is_announced_with_its_duration() -> None:
    from training.default_model import QUICK_STEPS_PER_SECOND, quick_settings, training_announcement

    s = quick_settings(num_threads=2, progress=False)
    line = training_announcement(s, "quick")
    minutes = (s.max_steps or 0) / QUICK_STEPS_PER_SECOND[s.precision] / 60
    assert f"{s.max_steps} steps" in line and "minutes" in line
    # The figure follows the recipe: more steps, a longer estimate.
    longer = training_announcement(quick_settings(num_threads=2, max_steps=(s.max_steps or 0) * 3), "quick")
    assert int(longer.split("about ")[1].split(" ")[0]) > int(line.split("about ")[1].split(" ")[0]) >= int(minutes)
    assert "minutes" not in training_announcement(TrainSettings(max_steps=None, num_threads=2), "full")


# --- training arithmetic --------------------------------------------------------------------------

_X86_CPUINFO = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx2 avx512f {extra}\n\nprocessor\t: 1\n"
_ARM_CPUINFO = "processor\t: 0\nFeatures\t: fp asimd {extra}\nCPU implementer\t: 0x41\n"


def test_bf16_is_detected_from_the_cpu_flags() -> None:
    from finpulse.cpu import cpu_flags, cpu_has_bf16, cpu_model_name

    assert cpu_has_bf16(_X86_CPUINFO.format(extra="avx512_bf16 avx512_vnni"))
    assert cpu_has_bf16(_X86_CPUINFO.format(extra="amx_bf16 amx_tile"))
    assert not cpu_has_bf16(_X86_CPUINFO.format(extra="avx512_vnni"))  # VNNI is int8, not bf16
    assert cpu_has_bf16(_ARM_CPUINFO.format(extra="bf16 i8mm"))
    assert not cpu_has_bf16(_ARM_CPUINFO.format(extra="i8mm"))
    assert cpu_flags("") == frozenset() and not cpu_has_bf16("model name : something\n")
    assert cpu_model_name("processor\t: 0\nmodel name\t: AMD EPYC 9R14\nflags\t: fpu\n") == "AMD EPYC 9R14"
    assert cpu_model_name(_ARM_CPUINFO.format(extra="")) is None


def test_precision_auto_follows_the_hardware_and_never_hides_a_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    import training.train as train_mod
    from training.train import TrainingError, resolve_precision

    cpu = torch.device("cpu")
    for native in (True, False):
        monkeypatch.setattr(train_mod, "cpu_has_bf16", lambda native=native: native)
        assert resolve_precision("auto", cpu) == ("bf16" if native else "fp32")
        assert resolve_precision("fp32", cpu) == "fp32"
        # Asked for explicitly, bf16 runs even where it is emulated (slower), and says so in the log.
        assert resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(TrainingError, match="unknown precision"):
        resolve_precision("fp8", cpu)


def test_quick_recipe_fills_its_budget_in_either_precision(monkeypatch: pytest.MonkeyPatch) -> None:
    import training.train as train_mod
    from training.default_model import QUICK_STEPS, expected_seconds, quick_settings, recipe_hash

    made = {}
    for native in (True, False):
        monkeypatch.setattr(train_mod, "cpu_has_bf16", lambda native=native: native)
        s = quick_settings(num_threads=2, progress=False, device="cpu")
        made[native] = s
        assert s.precision == ("bf16" if native else "fp32")
        assert s.max_steps == QUICK_STEPS[s.precision]
        # Either way the announced time stays within the demo's 10-minute budget on 2 cores.
        assert expected_seconds(s, 2) <= 600
        # A step count given by the caller wins over the precision's default.
        assert quick_settings(num_threads=2, device="cpu", max_steps=7).max_steps == 7
    # The arithmetic is part of the model's identity: a bf16 model is not reused as the fp32 one.
    assert recipe_hash(made[True]) != recipe_hash(made[False])
    # A device this machine lacks does not fail the recipe (a cached model can still be served);
    # training itself reports it.
    if not torch.cuda.is_available():
        assert quick_settings(num_threads=2, device="cuda").precision == "auto"


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_lowers_the_loss_in_each_precision(
    data_dir: Path, base_dir: Path, tmp_path: Path, precision: str
) -> None:
    settings = _settings(data_dir, base_dir, precision=precision, max_steps=40, evals_per_epoch=0)
    res = train(settings, tmp_path / precision)
    assert res.metrics["precision"] == precision
    assert res.metrics["hyperparameters"]["precision"] == precision
    first, last = np.mean(res.loss_history[:5]), np.mean(res.loss_history[-5:])
    assert last < first * 0.8, (precision, first, last)
    # The saved weights are fp32 whatever the arithmetic was: the exporters and backends expect that.
    assert all(p.dtype == torch.float32 for p in res.model.parameters())
