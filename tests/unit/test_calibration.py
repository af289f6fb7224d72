"""Temperature scaling and calibration error: the metrics, the fit, and the engine applying the temperature."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.backends.base import Backend
from engine.bundle import HeadManifest
from engine.errors import ModelFormatError
from engine.heads import HeadSpec
from engine.tokenize import EncodedBatch
from training.data import TaskData
from training.metrics import choose_temperature, expected_calibration_error, fit_temperature, nll, softmax_t


def _sample(rng: np.random.Generator, n: int, k: int, true_temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """Logits, and labels drawn from softmax(logits / true_temperature): a model whose right temperature is known."""
    logits = rng.normal(0.0, 3.0, size=(n, k))
    p = softmax_t(logits, true_temperature)
    labels = np.array([rng.choice(k, p=row) for row in p])
    return logits, labels


@pytest.mark.parametrize("true_temperature", [0.5, 1.0, 2.5])
def test_fit_recovers_a_known_temperature(true_temperature: float) -> None:
    logits, labels = _sample(np.random.default_rng(7), 20_000, 3, true_temperature)
    fitted = fit_temperature(logits, labels)
    assert fitted == pytest.approx(true_temperature, rel=0.08)
    # At the labels' own temperature the probabilities are calibrated, at 1.0 (unless it is 1.0) they are not.
    assert expected_calibration_error(softmax_t(logits, fitted), labels) < 0.02
    if true_temperature != 1.0:
        assert expected_calibration_error(softmax_t(logits), labels) > 0.04


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(2, 6), t=st.floats(0.3, 4.0))
def test_fitted_temperature_is_the_nll_minimum(seed: int, k: int, t: float) -> None:
    logits, labels = _sample(np.random.default_rng(seed), 300, k, t)
    fitted = fit_temperature(logits, labels)
    best = nll(logits, labels, fitted)
    for other in (fitted * 0.9, fitted * 1.1, 1.0):
        assert best <= nll(logits, labels, other) + 1e-9


def test_a_fit_that_worsens_ece_is_not_served() -> None:
    # Calibrated at T = 1, plus a few rows confidently wrong: they dominate the NLL and pull its fit
    # well above 1, which flattens every other row's confidence below its accuracy.
    rng = np.random.default_rng(3)
    logits, labels = _sample(rng, 3_000, 3, 1.0)
    wrong = np.zeros((30, 3))
    wrong[:, 0] = 25.0
    logits = np.vstack([logits, wrong])
    labels = np.concatenate([labels, np.full(30, 2)])
    fitted = fit_temperature(logits, labels)
    assert fitted > 1.3
    ece_before = expected_calibration_error(softmax_t(logits), labels)
    assert expected_calibration_error(softmax_t(logits, fitted), labels) > ece_before
    assert choose_temperature(logits, labels) == (1.0, fitted)


@pytest.mark.parametrize("true_temperature", [0.5, 2.5])
def test_a_fit_that_lowers_ece_is_served(true_temperature: float) -> None:
    logits, labels = _sample(np.random.default_rng(11), 5_000, 3, true_temperature)
    served, fitted = choose_temperature(logits, labels)
    assert served == fitted == pytest.approx(true_temperature, rel=0.1)


def test_ece_by_hand() -> None:
    # Two bins used: confidence 0.9 (2 rows, 1 right) and 0.6 (2 rows, both right).
    probs = np.array([[0.9, 0.1], [0.1, 0.9], [0.6, 0.4], [0.4, 0.6]])
    labels = np.array([0, 0, 0, 1])
    assert expected_calibration_error(probs, labels) == pytest.approx((2 * abs(0.5 - 0.9) + 2 * abs(1.0 - 0.6)) / 4)
    assert expected_calibration_error(np.zeros((0, 2)), np.zeros(0, dtype=int)) == 0.0
    with pytest.raises(ValueError):
        expected_calibration_error(probs, labels[:3])


def test_split_holds_out_a_disjoint_seeded_share() -> None:
    data = TaskData(
        task="sentiment",
        labels=("negative", "neutral", "positive"),
        texts=[f"t{i}" for i in range(100)],
        label_ids=np.arange(100) % 3,
        lines=list(range(2, 102)),
        source=Path("x.csv"),
    )
    rest, held = data.split(0.1, seed=3)
    assert held is not None and len(held) == 10 and len(rest) == 90
    assert set(rest.texts).isdisjoint(held.texts) and set(rest.texts) | set(held.texts) == set(data.texts)
    assert data.split(0.1, seed=3)[1].texts == held.texts  # type: ignore[union-attr]
    assert data.split(0.0, seed=3) == (data, None)


class _FixedLogits(Backend):
    """Returns the same logits for every row: enough to see what the base class does with them."""

    name: ClassVar[str] = "fixed"
    logits: ClassVar[np.ndarray] = np.array([2.0, 0.0, -1.0], dtype=np.float32)

    def _infer_impl(self, batch: EncodedBatch) -> dict[str, np.ndarray]:
        return {h.name: np.tile(self.logits, (batch.size, 1)) for h in self.heads}


@pytest.mark.parametrize("temperature", [1.0, 0.5, 3.0])
def test_every_backend_divides_by_the_head_temperature(temperature: float) -> None:
    head = HeadSpec("sentiment", ("negative", "neutral", "positive"), temperature=temperature)
    backend = _FixedLogits([head], max_batch_size=4, max_seq_len=8, model_id="m")
    ids = np.ones((2, 4), dtype=np.int64)
    probs = backend.infer(EncodedBatch(input_ids=ids, attention_mask=np.ones_like(ids)))["sentiment"]
    np.testing.assert_allclose(probs[0], softmax_t(_FixedLogits.logits[None, :], temperature)[0], rtol=1e-5)


def test_temperature_round_trips_through_config_and_manifest() -> None:
    head = HeadSpec("topic", ("a", "b"), temperature=1.7)
    assert HeadSpec.from_config(head.to_config()) == head
    assert HeadSpec.from_config({"name": "x", "id2label": {"0": "a"}}).temperature == 1.0  # older checkpoints
    manifest: Any = HeadManifest(name="topic", labels=["a", "b"], output="topic_logits", temperature=1.7)
    assert manifest.spec() == head
    with pytest.raises(ModelFormatError):
        HeadSpec("x", ("a",), temperature=0.0)
    with pytest.raises(ModelFormatError):
        HeadSpec.from_config({"name": "x", "id2label": {"0": "a"}, "temperature": "warm"})


def test_runs_with_one_calibration_seed_hold_out_the_same_rows(tmp_path: Path) -> None:
    # Seeds whose weights are to be averaged must share the rows that fit the average's temperature.
    from training.settings import TrainSettings
    from training.train import load_splits

    rows = [(f"text number {i} about shares", i % 3) for i in range(200)]
    data = tmp_path / "sentiment.csv"
    data.write_text("text,label\n" + "\n".join(f"{t},{y}" for t, y in rows) + "\n")

    def calib(**kw: Any) -> set[str]:
        settings = TrainSettings(data_dir=None, sentiment_train=data, topic_train=None, **kw)
        (split,) = load_splits(settings)
        assert split.calib is not None
        assert not set(split.calib.texts) & set(split.train.texts)
        return set(split.calib.texts)

    assert calib(seed=13) != calib(seed=14)  # by default the held-out rows move with the seed
    assert calib(seed=13, calibration_seed=7) == calib(seed=14, calibration_seed=7) == calib(seed=7)
    assert TrainSettings(seed=14, calibration_seed=7).hyperparameters()["calibration_seed"] == 7
    assert "calibration_seed" not in TrainSettings(seed=14).hyperparameters()  # earlier runs' hashes stay


def test_a_temperature_is_chosen_for_any_number_of_rows() -> None:
    # Under four rows there are no halves: the fit is judged in sample, and never crashes.
    rng = np.random.default_rng(5)
    for n in range(0, 8):
        logits, labels = _sample(rng, n, 3, 1.0) if n else (np.zeros((0, 3)), np.zeros(0, dtype=int))
        served, fitted = choose_temperature(logits, labels)
        assert served in (1.0, fitted)
        assert choose_temperature(logits, labels) == (served, fitted)  # the halves' draw is seeded
