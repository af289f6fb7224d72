"""Shared fixtures: tiny models built once per session, sample texts from the real data when present."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.tiny_bert import make_tiny_checkpoint, write_tiny_task_files
from training.data import sentiment_texts

FALLBACK_TEXTS = [
    "$AAPL beats earnings estimates, shares jump after hours",
    "Fed signals rate hike as inflation stays high",
    "Oil slides as OPEC output rises",
    "$TSLA recalls 100,000 vehicles over brake issue; stock falls 5%",
    "Goldman upgrades $MSFT to buy",
    "Markets flat ahead of jobs report",
]


def _data_dir() -> Path | None:
    from stream.settings import StreamSettings

    d = StreamSettings().data_dir
    return Path(d) if d and Path(d).is_dir() else None


@pytest.fixture(scope="session")
def sample_texts() -> list[str]:
    """Up to 400 real tweet texts (sentiment train set), or a few built-in headlines without data."""
    d = _data_dir()
    if d is None:
        return FALLBACK_TEXTS
    return sentiment_texts(d, 400, split="train")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, sample_texts: list[str]) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("models") / "tiny", sample_texts)


@pytest.fixture(scope="session")
def tiny_task_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The four small task files and tiny base encoder that ``tiny_train_settings`` reads (read-only)."""
    d = tmp_path_factory.mktemp("tiny-tasks")
    write_tiny_task_files(d)
    return d
