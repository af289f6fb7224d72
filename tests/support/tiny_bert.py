"""Build tiny, randomly initialised BERT checkpoints for tests (no model hub, a few hundred KB)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from engine.modeling import SENTIMENT_LABELS, HeadSpec, MultiHeadClassifier
from training.data import TOPIC_LABELS
from training.settings import TrainSettings

DEFAULT_HEADS: tuple[HeadSpec, ...] = (HeadSpec("sentiment", SENTIMENT_LABELS), HeadSpec("topic", TOPIC_LABELS))
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def build_vocab(corpus: Iterable[str], size: int = 2000) -> list[str]:
    """Specials, single characters (so nothing is ever [UNK]-only) and the most frequent words."""
    from collections import Counter

    words: Counter[str] = Counter()
    chars: set[str] = set()
    for text in corpus:
        for w in re.findall(r"\w+|[^\w\s]", text.lower()):
            words[w] += 1
            chars.update(w)
    vocab = list(SPECIALS) + sorted(chars) + [f"##{c}" for c in sorted(chars)]
    seen = set(vocab)
    for w, _ in words.most_common():
        if len(vocab) >= size:
            break
        if w not in seen:
            vocab.append(w)
            seen.add(w)
    return vocab


def write_tokenizer(out: Path, vocab: Sequence[str]) -> None:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    vocab_map = {tok: i for i, tok in enumerate(vocab)}
    tok = Tokenizer(models.WordPiece(vocab_map, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab_map["[CLS]"]), ("[SEP]", vocab_map["[SEP]"])],
    )
    tok.decoder = decoders.WordPiece()
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (out / "tokenizer_config.json").write_text(
        '{"do_lower_case": true, "tokenizer_class": "BertTokenizerFast", "model_max_length": 512}'
    )
    (out / "special_tokens_map.json").write_text(
        '{"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]", '
        '"mask_token": "[MASK]"}'
    )


def make_tiny_encoder(
    out: Path,
    corpus: Iterable[str],
    seed: int = 0,
    hidden: int = 32,
    layers: int = 2,
    vocab: Sequence[str] | None = None,
) -> Path:
    """A tiny base encoder directory (BertModel, no heads), like the MiniLM base but ~100x smaller.

    The vocabulary is built from ``corpus`` unless one is given (to test tokenizers that differ).
    """
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    vocab = list(vocab) if vocab is not None else build_vocab(corpus)
    cfg = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=hidden * 2,
        max_position_embeddings=512,
        pad_token_id=0,
    )
    BertModel(cfg).save_pretrained(str(out))
    write_tokenizer(out, vocab)
    return out


def make_tiny_checkpoint(
    out: Path, corpus: Iterable[str], heads: Sequence[HeadSpec] = DEFAULT_HEADS, seed: int = 0
) -> Path:
    """A tiny finpulse two-head checkpoint with random weights, saved like a trained one."""
    from transformers import BertModel

    corpus = list(corpus)
    enc_dir = out.parent / (out.name + "-encoder")
    make_tiny_encoder(enc_dir, corpus, seed=seed)
    torch.manual_seed(seed + 1)
    model = MultiHeadClassifier(BertModel.from_pretrained(str(enc_dir), add_pooling_layer=False), heads)
    model.save_pretrained(out, extra_config={"finpulse_model_id": f"tiny-bert-seed{seed}"})
    write_tokenizer(out, build_vocab(corpus))
    return out


NEGATIVE_PHRASES = ("shares crash after fraud probe", "plunges on bankruptcy fears", "collapses as lawsuit widens")
POSITIVE_PHRASES = ("soars on record profit", "rallies after strong upgrade", "jumps on blowout earnings")


def make_keyword_model(out: Path, corpus: Sequence[str], steps: int = 60, seed: int = 0) -> Path:
    """A tiny two-head model trained briefly so that crash-words read negative, boom-words positive, the rest neutral.

    Tests need a model whose sentiment is predictable without hard-coding its outputs; this one
    learns it from data in a few seconds. Tests still check what it predicts before relying on it.
    """
    import random

    from engine.modeling import load_model
    from engine.tokenize import BatchTokenizer

    corpus = [t for t in corpus if t.strip()]
    vocab_corpus = list(corpus) + list(NEGATIVE_PHRASES) + list(POSITIVE_PHRASES)
    ckpt = make_tiny_checkpoint(out, vocab_corpus, seed=seed)
    loaded = load_model(ckpt)
    model = loaded.model.train()
    tok = BatchTokenizer.from_model_dir(ckpt, max_seq_len=32)
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        texts, labels = [], []
        for _ in range(32):
            base = rng.choice(corpus)
            kind = rng.randrange(3)
            phrase = rng.choice(NEGATIVE_PHRASES if kind == 0 else POSITIVE_PHRASES)
            # Phrase before or after the text, so position is not what the model learns.
            if kind == 1:
                texts.append(base)
            elif rng.random() < 0.5:
                texts.append(f"{phrase} {base}")
            else:
                texts.append(f"{base} {phrase}")
            labels.append(kind)
        t = tok.tokenize(texts)
        b = tok.collate(t, range(len(texts)))
        logits = model(torch.from_numpy(b.input_ids), torch.from_numpy(b.attention_mask))[0]
        loss = torch.nn.functional.cross_entropy(logits, torch.tensor(labels))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    model.save_pretrained(ckpt, extra_config={"finpulse_model_id": f"tiny-keyword-seed{seed}"})
    return ckpt


def tiny_train_settings(d: Path, **overrides: Any) -> TrainSettings:
    """Settings for a seconds-long ``train`` run on ``d``'s base encoder and four task files
    (``sentiment_train.csv``, ``sentiment_valid.csv``, ``topic_train.csv``, ``topic_valid.csv``)."""
    defaults: dict[str, Any] = {
        "base_dir": d / "base",
        "data_dir": None,
        **{
            f"{task}_{part}": d / f"{task}_{part}.csv" for task in ("sentiment", "topic") for part in ("train", "valid")
        },
        "max_seq_len": 32,
        "batch_size": 8,
        "max_steps": 6,
        "evals_per_epoch": 0,
        "progress": False,
        "num_threads": 1,
        "precision": "fp32",
    }
    return TrainSettings(**{**defaults, **overrides})


#: words the tiny task files are made of
TASK_WORDS = "apple tesla oil fed rates cut guidance beats misses shares fall rise bank merger deal dividend".split()


def write_tiny_task_files(d: Path, sizes: dict[str, tuple[int, int]] | None = None) -> list[str]:
    """Write ``tiny_train_settings``' four CSV files to ``d`` and a tiny base encoder to ``d / "base"``.

    ``sizes`` maps each file's name to (rows, classes); labels cycle through the classes. Returns every text.
    """
    import csv
    import random

    sizes = sizes or {
        "sentiment_train": (60, 3),
        "sentiment_valid": (15, 3),
        "topic_train": (60, 20),
        "topic_valid": (15, 20),
    }
    corpus: list[str] = []
    for i, (name, (n, classes)) in enumerate(sizes.items()):
        rng = random.Random(i)
        texts = [" ".join(rng.sample(TASK_WORDS, rng.randint(3, 7))) for _ in range(n)]
        corpus += texts
        with open(d / f"{name}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(("text", "label"))
            w.writerows((t, j % classes) for j, t in enumerate(texts))
    make_tiny_encoder(d / "base", corpus)
    return corpus
