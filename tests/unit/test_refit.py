"""Head refit: the L-BFGS fit itself, and ``finpulse train --refit-heads`` end to end on a tiny encoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from engine.modeling import load_model
from engine.tokenize import BatchTokenizer
from tests.support.tiny_bert import tiny_train_settings
from training.evaluate import predict_features, predict_logits
from training.metrics import classification_report
from training.refit import refit_head
from training.settings import TrainSettings
from training.train import TrainingError, load_splits, rescore, train, validate


def test_refit_separates_what_the_features_separate() -> None:
    # Two well-separated clusters per class: a converged refit from a wrong start labels them all right.
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 4, size=(3, 8))
    labels = rng.integers(0, 3, size=300)
    feats = centres[labels] + rng.normal(0, 0.5, size=(300, 8))
    head = nn.Linear(8, 3)
    with torch.no_grad():
        head.weight.copy_(-torch.from_numpy(centres).float())  # starts out predicting the wrong class
    before = (head(torch.from_numpy(feats).float()).argmax(1).numpy() == labels).mean()
    refit_head(head, feats, labels, np.ones(3), label_smoothing=0.1)
    after = (head(torch.from_numpy(feats).float()).argmax(1).numpy() == labels).mean()
    assert before < 0.5 < 0.99 <= after


def test_refit_enters_the_hash_only_when_on() -> None:
    assert "refit_heads" not in TrainSettings().hyperparameters()
    assert TrainSettings(refit_heads=True).hyperparameters()["refit_heads"] is True


def _settings(d: Path, **kw: object) -> TrainSettings:
    return tiny_train_settings(d, **{"max_steps": 8, "calibration_fraction": 0.2, "seed": 5, **kw})


def test_rescore_matches_a_fresh_validation_pass(tiny_task_dir: Path, tmp_path: Path) -> None:
    train(_settings(tiny_task_dir), tmp_path / "m")
    model = load_model(tmp_path / "m").model.eval()
    settings = _settings(tiny_task_dir)
    splits = load_splits(settings)
    tok = BatchTokenizer.from_model_dir(tmp_path / "m", max_seq_len=settings.max_seq_len, pad_multiple=8)
    for sp in splits:
        sp.valid_tok = tok.tokenize(sp.valid.texts) if sp.valid is not None else None
    first = validate(model, tok, splits, 16, torch.device("cpu"))
    with torch.no_grad():
        model.heads["topic"].weight.mul_(-1.0)  # a changed head, as a refit leaves it
    fresh = validate(model, tok, splits, 16, torch.device("cpu"))
    got = rescore(model, splits, first, {"topic"})
    assert np.allclose(got.logits["topic"], fresh.logits["topic"], atol=1e-5)
    assert not np.allclose(got.logits["topic"], first.logits["topic"], atol=1e-3)
    assert got.reports["topic"] == fresh.reports["topic"]
    # The head left out keeps its scores.
    assert got.logits["sentiment"] is first.logits["sentiment"]


def _refit_objective(head: nn.Module, feats: torch.Tensor, y: torch.Tensor, w: list[float], smoothing: float) -> float:
    """What ``refit_head`` minimises, for comparing heads."""
    assert isinstance(head, nn.Linear)
    with torch.no_grad():
        ce = nn.functional.cross_entropy(head(feats), y, weight=torch.tensor(w), label_smoothing=smoothing)
        return float(ce + 1e-4 * (head.weight**2).sum())


@pytest.mark.slow
def test_train_with_refit_heads(tiny_task_dir: Path, tmp_path: Path) -> None:
    plain = train(_settings(tiny_task_dir), tmp_path / "plain")
    refit = train(_settings(tiny_task_dir, refit_heads=True), tmp_path / "refit")
    assert plain.metrics["head_refit"] is None
    rows = {sp.task: len(sp.train) for sp in load_splits(_settings(tiny_task_dir))}
    got = refit.metrics["head_refit"]
    assert {t: r["rows"] for t, r in got.items()} == rows  # training rows only: no calibration rows
    assert {t: r["macro_f1_after"] for t, r in got.items()} == {
        t: r["macro_f1"] for t, r in refit.metrics["heads"].items()
    }
    assert {t: r["macro_f1_before"] for t, r in got.items()} == {
        t: r["macro_f1"] for t, r in plain.metrics["heads"].items()
    }
    assert refit.metrics["hyperparameters"]["refit_heads"] is True
    assert refit.metrics["config_hash"] != plain.metrics["config_hash"]

    a = load_model(tmp_path / "plain").model.eval()
    b = load_model(tmp_path / "refit").model.eval()
    sa, sb = a.state_dict(), b.state_dict()
    # Same seed, same steps: the encoder is the same; only the heads (and their temperatures) moved.
    assert all(torch.equal(sa[k], sb[k]) for k in sa if k.startswith("bert."))
    assert not torch.allclose(sa["heads.topic.weight"], sb["heads.topic.weight"], atol=1e-4)

    settings = _settings(tiny_task_dir)
    tok = BatchTokenizer.from_model_dir(tmp_path / "refit", max_seq_len=settings.max_seq_len, pad_multiple=8)
    index = {name: i for i, name in enumerate(b.head_names)}
    for sp in load_splits(settings):
        # The refit lowered the refit objective on the training rows' features...
        feats = torch.from_numpy(predict_features(a, tok, sp.train.texts))
        y = torch.from_numpy(sp.train.label_ids)
        w = refit.metrics["class_weights"][sp.task]

        after, before = (_refit_objective(m.heads[sp.task], feats, y, w, settings.label_smoothing) for m in (b, a))
        assert after < before - 1e-3
        assert after == pytest.approx(got[sp.task]["loss"], abs=1e-4)
        # ...and the reported validation score is what the saved model scores on a fresh pass.
        assert sp.valid is not None
        logits = predict_logits(b, tok, sp.valid.texts)[index[sp.task]]
        fresh = classification_report(sp.valid.label_ids, logits.argmax(axis=1), sp.valid.labels)
        assert fresh["macro_f1"] == pytest.approx(refit.metrics["heads"][sp.task]["macro_f1"], abs=1e-9)


def test_refit_only_leaves_the_other_head_as_trained(tiny_task_dir: Path, tmp_path: Path) -> None:
    plain = train(_settings(tiny_task_dir), tmp_path / "plain")
    topic = train(_settings(tiny_task_dir, refit_heads=True, refit_only=["topic"]), tmp_path / "topic")
    assert set(topic.metrics["head_refit"]) == {"topic"}
    a, b = (load_model(tmp_path / n).model.state_dict() for n in ("plain", "topic"))
    assert all(torch.equal(a[k], b[k]) for k in a if not k.startswith("heads.topic"))
    assert not torch.allclose(a["heads.topic.weight"], b["heads.topic.weight"], atol=1e-4)
    assert topic.metrics["heads"]["sentiment"] == plain.metrics["heads"]["sentiment"]
    assert topic.metrics["hyperparameters"]["refit_only"] == ["topic"]
    assert "refit_only" not in TrainSettings(refit_heads=True).hyperparameters()
    with pytest.raises(TrainingError, match="refit_only names news"):
        train(_settings(tiny_task_dir, refit_heads=True, refit_only=["news"]), tmp_path / "bad")
    with pytest.raises(TrainingError, match="refit_heads is off"):
        train(_settings(tiny_task_dir, refit_only=["topic"]), tmp_path / "off")
