"""``finpulse train --ema-decay``: the moving average of the weights is what is validated, selected and saved."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.modeling import load_model
from engine.tokenize import BatchTokenizer
from tests.support.tiny_bert import tiny_train_settings
from training.evaluate import predict_logits
from training.metrics import classification_report
from training.settings import TrainSettings
from training.train import load_splits, train


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_model(path).model.state_dict().items() if v.is_floating_point()}


def test_the_saved_model_is_the_moving_average_of_the_steps(tiny_task_dir: Path, tmp_path: Path) -> None:
    # Two steps, one seed: the live weights W1, W2 are the same in every run (the average never feeds back), and
    # the average after them is d*W1 + (1-d)*W2, a straight line in the decay d through W2 (at d -> 0).
    runs = {
        d: train(tiny_train_settings(tiny_task_dir, max_steps=2, ema_decay=d), tmp_path / f"d{d}")
        for d in (1e-9, 0.3, 0.6)
    }
    last, a, b = (_weights(tmp_path / f"d{d}") for d in (1e-9, 0.3, 0.6))
    moved = [k for k in last if not torch.allclose(a[k], last[k], atol=1e-7)]
    assert any(k.startswith("bert.encoder") for k in moved) and any(k.startswith("heads.") for k in moved)
    for k in last:
        torch.testing.assert_close(b[k] - last[k], 2.0 * (a[k] - last[k]), atol=2e-6, rtol=1e-4)
    # The vanishing decay saves the last step's weights: what a run without the average saves.
    train(tiny_train_settings(tiny_task_dir, max_steps=2), tmp_path / "plain")
    plain = _weights(tmp_path / "plain")
    for k in plain:
        torch.testing.assert_close(plain[k], last[k], atol=1e-6, rtol=1e-5)
    assert runs[0.3].metrics["hyperparameters"]["ema_decay"] == 0.3
    assert runs[0.3].metrics["config_hash"] != runs[0.6].metrics["config_hash"]
    assert "ema_decay" not in TrainSettings().hyperparameters()  # earlier models' hashes stay what they were


def test_the_reported_score_is_the_saved_averages(tiny_task_dir: Path, tmp_path: Path) -> None:
    settings = tiny_train_settings(tiny_task_dir, ema_decay=0.8)
    run = train(settings, tmp_path / "ema")
    model = load_model(tmp_path / "ema").model.eval()
    tok = BatchTokenizer.from_model_dir(tmp_path / "ema", max_seq_len=settings.max_seq_len, pad_multiple=8)
    index = {name: i for i, name in enumerate(model.head_names)}
    for sp in load_splits(settings):
        assert sp.valid is not None
        logits = predict_logits(model, tok, sp.valid.texts)[index[sp.task]]
        fresh = classification_report(sp.valid.label_ids, logits.argmax(axis=1), sp.valid.labels)
        assert fresh["macro_f1"] == pytest.approx(run.metrics["heads"][sp.task]["macro_f1"], abs=1e-9)
