"""The finpulse classifier: one BERT encoder, one linear head per task, one forward pass for all heads.

A finpulse checkpoint is a Hugging Face-style directory: ``config.json`` (a BERT config plus a
``finpulse_heads`` list holding each head's name, ``id2label`` and pooling), ``model.safetensors``
(encoder weights under ``bert.``, heads under ``heads.<name>.``) and the tokenizer files. A plain
``BertForSequenceClassification`` checkpoint (FinBERT and friends) loads too, as a single head.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.errors import ModelFormatError
from engine.heads import CONFIG_HEADS_KEY, SENTIMENT_LABELS, HeadSpec, read_config

# Re-exported: training and the tests build models from these together with the torch classes.
__all__ = [
    "CONFIG_HEADS_KEY",
    "SENTIMENT_LABELS",
    "HeadSpec",
    "LoadedModel",
    "MultiHeadClassifier",
    "load_model",
    "mean_pool",
    "new_multihead_model",
    "read_config",
]


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of the token vectors that the mask keeps (padding never leaks into the result)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


class MultiHeadClassifier(nn.Module):
    """BERT encoder + named linear heads. ``forward`` returns one logits tensor per head, in head order."""

    def __init__(self, encoder: nn.Module, heads: Sequence[HeadSpec], dropout: float = 0.1) -> None:
        super().__init__()
        if not heads:
            raise ValueError("at least one head is required")
        self.bert = encoder
        self.head_specs: tuple[HeadSpec, ...] = tuple(heads)
        # A Hugging Face encoder: its config is a plain attribute that torch's Module typing cannot see.
        config: Any = encoder.config
        hidden = int(config.hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.heads = nn.ModuleDict({h.name: nn.Linear(hidden, len(h.labels)) for h in heads})
        self._uses_pooler = any(h.pooling == "pooler" for h in heads)

    @property
    def config(self) -> Any:
        return self.bert.config

    @property
    def head_names(self) -> tuple[str, ...]:
        return tuple(h.name for h in self.head_specs)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.bert(input_ids=input_ids, attention_mask=attention_mask)
        return self._head_logits(out, mean_pool(out.last_hidden_state, attention_mask))

    def forward_with_hidden_states(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """The heads' logits and the encoder's token states, embeddings first then one per layer.

        For hidden-state distillation in training; serving and export use ``forward``.
        """
        out = self.bert(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        return self._head_logits(out, mean_pool(out.last_hidden_state, attention_mask)), tuple(out.hidden_states)

    def forward_with_features(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """The heads' logits and the mean-pooled last layer that mean-pooled heads read (before dropout).

        For training, which refits heads on these features; serving and export use ``forward``.
        """
        out = self.bert(input_ids=input_ids, attention_mask=attention_mask)
        mean = mean_pool(out.last_hidden_state, attention_mask)
        return self._head_logits(out, mean), mean

    def _head_logits(self, out: Any, mean: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # ``mean``: the mean-pooled last layer, pooled once by the caller (``forward_with_features`` returns it too).
        pooled = out.pooler_output if self._uses_pooler else None
        logits = []
        for spec in self.head_specs:
            feats = pooled if spec.pooling == "pooler" else mean
            logits.append(self.heads[spec.name](self.dropout(feats)))
        return tuple(logits)

    def save_pretrained(self, out_dir: str | Path, extra_config: dict[str, Any] | None = None) -> Path:
        """Write config.json (with the head specs) and model.safetensors to ``out_dir``."""
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        bert_config: Any = self.bert.config
        cfg = bert_config.to_dict()
        cfg["architectures"] = ["FinpulseMultiHeadModel"]
        cfg[CONFIG_HEADS_KEY] = [h.to_config() for h in self.head_specs]
        # HF convention: id2label of the first head, so generic tools show sensible labels.
        cfg["id2label"] = self.head_specs[0].to_config()["id2label"]
        cfg["label2id"] = {lab: i for i, lab in enumerate(self.head_specs[0].labels)}
        if extra_config:
            cfg.update(extra_config)
        (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
        return out


@dataclass
class LoadedModel:
    """A model ready for inference plus what is needed to describe it."""

    model: MultiHeadClassifier
    heads: tuple[HeadSpec, ...]
    path: Path
    model_id: str
    extra: dict[str, Any] = field(default_factory=dict)


def _normalise_label(label: str) -> str:
    low = label.strip().lower()
    return {"bearish": "negative", "bullish": "positive", "neg": "negative", "pos": "positive", "neu": "neutral"}.get(
        low, low
    )


def new_multihead_model(base_dir: str | Path, heads: Sequence[HeadSpec], dropout: float = 0.1) -> MultiHeadClassifier:
    """A fresh classifier on top of a pretrained BERT-family encoder directory (heads randomly initialised)."""
    from transformers import AutoModel

    base = Path(base_dir)
    read_config(base)
    encoder = AutoModel.from_pretrained(
        str(base), local_files_only=True, add_pooling_layer=any(h.pooling == "pooler" for h in heads)
    )
    return MultiHeadClassifier(encoder, heads, dropout=dropout)


def load_model(path: str | Path) -> LoadedModel:
    """Load a finpulse multi-head checkpoint or a single-head sequence-classification checkpoint."""
    from transformers import AutoConfig, AutoModel

    p = Path(path)
    cfg = read_config(p)
    weights = p / "model.safetensors"
    model_id = f"{p.name}"
    if CONFIG_HEADS_KEY in cfg:
        heads = tuple(HeadSpec.from_config(h) for h in cfg[CONFIG_HEADS_KEY])
        if not weights.is_file():
            raise ModelFormatError(p, "no model.safetensors")
        from safetensors.torch import load_file

        config = AutoConfig.from_pretrained(str(p), local_files_only=True)
        encoder = AutoModel.from_config(config, add_pooling_layer=any(h.pooling == "pooler" for h in heads))
        model = MultiHeadClassifier(encoder, heads)
        state = load_file(str(weights))
        missing, unexpected = model.load_state_dict(state, strict=False)
        # position_ids buffers differ between transformers versions; anything else is a real mismatch.
        missing = [k for k in missing if not k.endswith("position_ids")]
        unexpected = [k for k in unexpected if not k.endswith("position_ids")]
        if missing or unexpected:
            raise ModelFormatError(p, f"weights do not match config: missing={missing[:5]} unexpected={unexpected[:5]}")
        model.eval()
        return LoadedModel(model=model, heads=heads, path=p, model_id=str(cfg.get("finpulse_model_id", model_id)))

    archs = cfg.get("architectures") or []
    if any(a.endswith("ForSequenceClassification") for a in archs):
        return _load_single_head(p, cfg, model_id)
    raise ModelFormatError(p, f"no classification head (architectures={archs}); train one with `finpulse train`")


def _load_single_head(p: Path, cfg: dict[str, Any], model_id: str) -> LoadedModel:
    """Wrap a ``*ForSequenceClassification`` checkpoint as a one-head finpulse model (pooler + classifier)."""
    from transformers import AutoModelForSequenceClassification

    hf = AutoModelForSequenceClassification.from_pretrained(str(p), local_files_only=True)
    id2label = {int(k): v for k, v in (cfg.get("id2label") or {}).items()}
    labels = tuple(_normalise_label(id2label[i]) for i in range(len(id2label)))
    name = "sentiment" if set(labels) >= set(SENTIMENT_LABELS) else "label"
    spec = HeadSpec(name=name, labels=labels, pooling="pooler")
    base_prefix = getattr(hf, "base_model_prefix", "bert")
    encoder = getattr(hf, base_prefix)
    model = MultiHeadClassifier(encoder, (spec,), dropout=0.0)
    classifier = getattr(hf, "classifier", None)
    if not isinstance(classifier, nn.Linear):
        raise ModelFormatError(p, "only checkpoints with a single linear 'classifier' are supported")
    model.heads[name].load_state_dict(classifier.state_dict())
    model.eval()
    return LoadedModel(model=model, heads=(spec,), path=p, model_id=model_id)
