"""Domain-adaptive masked-LM pretraining (``finpulse pretrain``): adapt the base encoder to market text.

The base MiniLM was trained for sentence similarity on general web text; the monitor reads cashtags,
tickers and trader slang. Continuing masked-LM training on unlabelled in-domain tweets (StockNet)
and, by default, on the tasks' own training texts (task-adaptive pretraining) gives the encoder that
vocabulary before it is fine-tuned. The result is a plain BERT encoder directory that
``finpulse train --base DIR`` takes like the original.

**No validation text reaches the corpus.** Every corpus text that equals a validation text after
normalisation (case, links, retweet prefix, punctuation), or whose word-shingle Jaccard with one
reaches ``pretrain_near_duplicate`` (MinHash LSH from datasketch), is left out, and the count is
recorded in ``pretrain.json``. Otherwise the encoder could memorise the very texts it is later
scored on.

The checkpoint of ``all-MiniLM-L6-v2`` has no masked-LM head: its decoder is tied to the word
embeddings (kept frozen here, so the vocabulary the classifier sees does not move), and the head's
transform and bias start fresh; that is logged, not hidden.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import structlog
import torch
from rich.console import Console
from torch.nn import functional as F  # noqa: N812 - torch's own convention

from engine.tokenize import BatchTokenizer
from training.data import TASKS, load_task_data, read_records
from training.overlap import Exclusion, exclude_validation, normalise_text
from training.settings import TrainSettings
from training.train import (
    PRETRAIN_FILE,
    TOKENIZER_FILES,
    TrainingError,
    batch_stream,
    lr_lambda,
    no_weight_decay,
    progress_bar,
    require_base,
    resolve_device,
    resolve_precision,
    seed_everything,
)

log = structlog.get_logger(__name__)


@dataclass
class Corpus:
    """The masked-LM texts (unique, validation-free) and where they came from."""

    texts: list[str]
    sources: dict[str, int]
    duplicates: int
    exclusion: Exclusion


def build_corpus(settings: TrainSettings) -> Corpus:
    """Unique corpus texts (StockNet, plus the tasks' training texts if enabled), validation texts removed."""
    texts: list[str] = []
    sources: dict[str, int] = {}
    if settings.pretrain_corpus is not None:
        path = Path(settings.pretrain_corpus)
        if not path.is_file():
            raise TrainingError(f"pretraining corpus {path} not found: set --corpus or the data folder")
        got = [r.text for r in read_records(path) if r.text.strip()]
        sources[f"{path.parent.name}/{path.name}"] = len(got)
        texts.extend(got)
    validation: list[str] = []
    for task in TASKS:
        valid = getattr(settings, f"{task}_valid", None)
        if valid is not None and Path(valid).is_file():
            validation.extend(load_task_data(valid, task).texts)
        train = getattr(settings, f"{task}_train", None)
        if settings.pretrain_task_texts and train is not None and Path(train).is_file():
            got = load_task_data(train, task).texts
            sources[f"{task} train"] = len(got)
            texts.extend(got)
    if not texts:
        raise TrainingError("empty pretraining corpus: no corpus file and no task training texts")
    # Retweets and multi-ticker tweets repeat verbatim; one copy each, in first-seen order.
    seen: set[str] = set()
    unique: list[str] = []
    for t in texts:
        key = normalise_text(t)
        if key and key not in seen:
            seen.add(key)
            unique.append(t)
    exclusion = exclude_validation(unique, validation, settings.pretrain_near_duplicate)
    return Corpus(texts=exclusion.kept, sources=sources, duplicates=len(texts) - len(unique), exclusion=exclusion)


def _mask(
    ids: torch.Tensor,
    attention: torch.Tensor,
    special: torch.Tensor,
    prob: float,
    mask_id: int,
    vocab: int,
    gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking: ``prob`` of the real tokens are targets; 80% become [MASK], 10% a random token, 10% stay.

    Written here rather than through ``DataCollatorForLanguageModeling`` so that the held-out loss
    uses its own seeded generator (the same masks before and after training) without touching
    torch's global RNG.
    """
    candidates = attention.bool() & ~special
    targets = (torch.rand(ids.shape, generator=gen) < prob) & candidates
    labels = torch.where(targets, ids, torch.full_like(ids, -100))
    roll = torch.rand(ids.shape, generator=gen)
    masked = ids.clone()
    masked[targets & (roll < 0.8)] = mask_id
    swap = targets & (roll >= 0.8) & (roll < 0.9)
    masked[swap] = torch.randint(vocab, ids.shape, generator=gen)[swap]
    return masked, labels


class _MaskedLM:
    """The encoder and its masked-LM head, with the loss computed on the masked positions only.

    Scoring only the ~15% masked positions against the 30k-word vocabulary, instead of every
    position as ``BertForMaskedLM.forward`` does, is most of a CPU step saved.
    """

    def __init__(self, base: Path, device: torch.device) -> None:
        from transformers import BertForMaskedLM

        model, info = BertForMaskedLM.from_pretrained(str(base), local_files_only=True, output_loading_info=True)
        self.fresh_head = sorted(k for k in info["missing_keys"] if k.startswith("cls."))
        self.model: Any = model.to(device)
        # The decoder is tied to the word embeddings: both stay as the base has them.
        self.model.bert.embeddings.word_embeddings.weight.requires_grad_(False)
        self.device = device

    def loss(self, ids: torch.Tensor, attention: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        hidden = self.model.bert(input_ids=ids, attention_mask=attention).last_hidden_state
        chosen = labels != -100
        logits = self.model.cls(hidden[chosen])
        return F.cross_entropy(logits.float(), labels[chosen])


def _special_mask(ids: torch.Tensor, special_ids: list[int]) -> torch.Tensor:
    return torch.isin(ids, torch.tensor(special_ids, dtype=ids.dtype))


def pretrain(settings: TrainSettings, out_dir: str | Path, *, console: Console | None = None) -> dict[str, Any]:
    """Masked-LM training of ``settings.base_dir`` on the pretraining corpus; writes an encoder directory.

    Returns (and writes to ``pretrain.json``) the corpus counts, the exclusion counts, and the
    held-out masked-LM loss before and after. Raises ``TrainingError`` when it cannot start.
    """
    threads_before = torch.get_num_threads()
    try:
        return _pretrain(settings, Path(out_dir), console or Console(stderr=True))
    finally:
        torch.set_num_threads(threads_before)


def _pretrain(settings: TrainSettings, out: Path, console: Console) -> dict[str, Any]:
    t0 = time.perf_counter()
    base = require_base(settings)
    device = resolve_device(settings.device)
    if device.type == "cpu":
        torch.set_num_threads(settings.threads())
    precision = resolve_precision(settings.precision, device)
    seed_everything(settings.seed)

    corpus = build_corpus(settings)
    rng = np.random.default_rng(settings.seed)
    order = rng.permutation(len(corpus.texts))
    n_hold = min(settings.pretrain_holdout, len(order) // 10)
    held = [corpus.texts[i] for i in order[:n_hold]]
    train_texts = [corpus.texts[i] for i in order[n_hold:]]
    log.info(
        "pretrain_corpus",
        sources=corpus.sources,
        duplicates=corpus.duplicates,
        excluded_exact=corpus.exclusion.exact,
        excluded_near=corpus.exclusion.near,
        train=len(train_texts),
        held_out=len(held),
    )

    tokenizer = BatchTokenizer.from_model_dir(base, max_seq_len=settings.max_seq_len, pad_multiple=8)
    tok = tokenizer.tokenize(train_texts)
    held_tok = tokenizer.tokenize(held) if held else None
    mlm = _MaskedLM(base, device)
    if mlm.fresh_head:
        log.warning("mlm_head_initialised", base=str(base), keys=mlm.fresh_head)
    cfg = mlm.model.config
    special_ids = sorted({i for i in (cfg.pad_token_id, *_special_token_ids(base)) if i is not None})
    mask_id = _token_id(base, "[MASK]")
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    def held_loss() -> float | None:
        if held_tok is None:
            return None
        gen = torch.Generator().manual_seed(settings.seed + 7)
        total, n = 0.0, 0
        mlm.model.eval()
        with torch.no_grad(), autocast:
            for start in range(0, len(held), settings.eval_batch_size):
                enc = tokenizer.collate(held_tok, np.arange(start, min(start + settings.eval_batch_size, len(held))))
                ids = torch.from_numpy(enc.input_ids)
                att = torch.from_numpy(enc.attention_mask)
                masked, labels = _mask(
                    ids, att, _special_mask(ids, special_ids), settings.pretrain_mask_prob, mask_id, cfg.vocab_size, gen
                )
                k = int((labels != -100).sum())
                if k:
                    loss = mlm.loss(masked.to(device), att.to(device), labels.to(device))
                    total += float(loss) * k
                    n += k
        return total / n if n else None

    before = held_loss()
    params = [p for p in mlm.model.parameters() if p.requires_grad]
    decay = [p for n, p in mlm.model.named_parameters() if p.requires_grad and not no_weight_decay(n)]
    no_decay = [p for n, p in mlm.model.named_parameters() if p.requires_grad and no_weight_decay(n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=settings.pretrain_lr,
    )
    steps = settings.pretrain_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(int(0.06 * steps), steps))
    batches = batch_stream(tok.lengths, settings.pretrain_batch_size, rng)
    gen = torch.Generator().manual_seed(settings.seed)
    losses: list[float] = []
    log.info(
        "pretrain_start",
        steps=steps,
        device=str(device),
        precision=precision,
        threads=settings.threads(),
        trainable_params=sum(p.numel() for p in params),
        epochs=round(steps * settings.pretrain_batch_size / max(1, len(train_texts)), 2),
    )
    mlm.model.train()
    with progress_bar(console, settings.progress) as progress:
        bar = progress.add_task("masked-LM", total=steps, info="")
        for step in range(steps):
            enc = tokenizer.collate(tok, next(batches))
            ids = torch.from_numpy(enc.input_ids)
            att = torch.from_numpy(enc.attention_mask)
            masked, labels = _mask(
                ids, att, _special_mask(ids, special_ids), settings.pretrain_mask_prob, mask_id, cfg.vocab_size, gen
            )
            if not bool((labels != -100).any()):
                continue
            with autocast:
                loss = mlm.loss(masked.to(device), att.to(device), labels.to(device))
            value = float(loss.detach())
            if not math.isfinite(value):
                raise TrainingError(f"masked-LM loss became {value} at step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
            optimizer.step()
            scheduler.step()
            losses.append(value)
            if step % 50 == 0:
                progress.update(bar, info=f"loss {np.mean(losses[-50:]):.3f}")
            progress.advance(bar)
    after = held_loss()

    out.mkdir(parents=True, exist_ok=True)
    mlm.model.bert.save_pretrained(str(out))
    for name in (*TOKENIZER_FILES, "README.md"):
        if (base / name).is_file():
            shutil.copyfile(base / name, out / name)
    report: dict[str, Any] = {
        "base": str(base),
        "base_name": _base_name(base),
        "steps": steps,
        "precision": precision,
        "device": str(device),
        "settings": {
            k: getattr(settings, k)
            for k in (
                "pretrain_task_texts",
                "pretrain_steps",
                "pretrain_batch_size",
                "pretrain_lr",
                "pretrain_mask_prob",
                "pretrain_near_duplicate",
                "max_seq_len",
                "seed",
            )
        },
        "corpus": {
            "sources": corpus.sources,
            "verbatim_duplicates_dropped": corpus.duplicates,
            "excluded_validation_exact": corpus.exclusion.exact,
            "excluded_validation_near": corpus.exclusion.near,
            "excluded_examples": corpus.exclusion.examples,
            "train_texts": len(train_texts),
            "held_out_texts": len(held),
        },
        "fresh_mlm_head": mlm.fresh_head,
        "held_out_mlm_loss": {"before": before, "after": after},
        "train_loss_last_100": float(np.mean(losses[-100:])) if losses else None,
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }
    (out / PRETRAIN_FILE).write_text(json.dumps(report, indent=2, default=str))
    log.info("pretrain_done", out=str(out), held_before=before, held_after=after, wall_s=report["wall_seconds"])
    return report


def _base_name(base: Path) -> str:
    prior = base / PRETRAIN_FILE
    if prior.is_file():
        return str(json.loads(prior.read_text()).get("base_name", base.name))
    return base.parent.name if base.name == "model" else base.name


def _token_id(base: Path, token: str) -> int:
    vocab: dict[str, int] = json.loads((base / "tokenizer.json").read_text())["model"]["vocab"]
    if token not in vocab:
        raise TrainingError(f"base encoder {base} has no {token} token: it cannot be mask-trained")
    return vocab[token]


def _special_token_ids(base: Path) -> list[int]:
    """Ids never chosen as masked-LM targets: the tokenizer's special tokens and BERT's usual ones."""
    data = json.loads((base / "tokenizer.json").read_text())
    ids = {int(t["id"]) for t in data.get("added_tokens", []) if t.get("special")}
    vocab: dict[str, int] = data["model"]["vocab"]
    names = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"}
    smap = base / "special_tokens_map.json"
    if smap.is_file():
        for v in json.loads(smap.read_text()).values():
            names.add(v["content"] if isinstance(v, dict) else str(v))
    ids.update(vocab[n] for n in names if n in vocab)
    return sorted(ids)
