"""Classification heads and the checkpoint config that names them: what a model predicts, without torch.

The worker, the bundle reader and every backend need a head's name and labels; only training, the
torch backends and the ONNX export need the torch modules in :mod:`engine.modeling`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from engine.errors import ModelFormatError

SentimentLabel = Literal["negative", "neutral", "positive"]
#: The sentiment head's labels in logit order (every finpulse model and the worker agree on it).
SENTIMENT_LABELS: tuple[SentimentLabel, SentimentLabel, SentimentLabel] = ("negative", "neutral", "positive")
#: Key of ``config.json`` that lists a finpulse checkpoint's heads.
CONFIG_HEADS_KEY = "finpulse_heads"


@dataclass(frozen=True)
class HeadSpec:
    """One classification head: its name, its labels in logit order and how it pools tokens."""

    name: str
    labels: tuple[str, ...]
    pooling: str = "mean"  # "mean" over unmasked tokens, or "pooler" (BERT's tanh(CLS) pooler)
    #: Logits are divided by this before the softmax (temperature scaling, fitted by ``finpulse train``
    #: on held-out training rows); 1.0 leaves the probabilities as the network made them.
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if not (self.temperature > 0 and self.temperature < float("inf")):
            raise ModelFormatError("config.json", f"head {self.name!r}: temperature {self.temperature} is not > 0")

    def to_config(self) -> dict[str, Any]:
        """The head as stored in ``config.json`` (``id2label`` keyed by string ids, as Hugging Face does)."""
        return {
            "name": self.name,
            "id2label": {str(i): lab for i, lab in enumerate(self.labels)},
            "pooling": self.pooling,
            "temperature": self.temperature,
        }

    @classmethod
    def from_config(cls, raw: dict[str, Any]) -> HeadSpec:
        """Inverse of :meth:`to_config`; ``ModelFormatError`` when the labels are missing or have gaps."""
        id2label = raw.get("id2label") or {}
        try:
            labels = tuple(id2label[str(i)] for i in range(len(id2label)))
        except KeyError as exc:
            raise ModelFormatError("config.json", f"head {raw.get('name')!r} has non-contiguous id2label") from exc
        if not labels:
            raise ModelFormatError("config.json", f"head {raw.get('name')!r} has no labels")
        try:
            temperature = float(raw.get("temperature", 1.0))
        except (TypeError, ValueError) as exc:
            raise ModelFormatError("config.json", f"head {raw.get('name')!r} has a non-numeric temperature") from exc
        return cls(
            name=str(raw["name"]), labels=labels, pooling=str(raw.get("pooling", "mean")), temperature=temperature
        )


def read_config(path: Path) -> dict[str, Any]:
    """The ``config.json`` of a checkpoint directory; ``ModelFormatError`` when missing or not JSON."""
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise ModelFormatError(path, "no config.json: not a Hugging Face checkpoint directory")
    try:
        cfg: dict[str, Any] = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as exc:
        raise ModelFormatError(cfg_file, f"invalid JSON ({exc})") from exc
    return cfg
