"""Batch tokenization with the fast (Rust) tokenizer and length-bucketed padding.

Texts are tokenized all at once, never one by one; each batch is padded only to its longest
member rounded up to ``pad_multiple``, never to a fixed 128 or 512.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import ModelFormatError
from engine.settings import DEFAULT_MAX_SEQ_LEN
from finpulse.extras import missing_extra


@dataclass(frozen=True)
class EncodedBatch:
    """Padded model inputs for one backend call: int64 arrays of shape (batch, seq_len)."""

    input_ids: np.ndarray
    attention_mask: np.ndarray

    @property
    def size(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def real_tokens(self) -> int:
        return int(self.attention_mask.sum())


@dataclass(frozen=True)
class TokenizedTexts:
    """Unpadded token ids for many texts, plus their lengths (for sorting and budgeting)."""

    ids: list[list[int]]
    lengths: np.ndarray


def round_up(n: int, multiple: int) -> int:
    return ((n + multiple - 1) // multiple) * multiple


def pad_token_id(tok: Any) -> int:
    """The id a ``tokenizers.Tokenizer`` pads with: its padding setting, else '[PAD]' or '<pad>', else 0."""
    padding = tok.padding
    if padding and padding.get("pad_id") is not None:
        return int(padding["pad_id"])
    for name in ("[PAD]", "<pad>"):
        found = tok.token_to_id(name)
        if found is not None:
            return int(found)
    return 0


class BatchTokenizer:
    """Wraps ``tokenizers.Tokenizer``: truncation at ``max_seq_len``, bucketed padding done here."""

    def __init__(
        self, tokenizer_file: str | Path, max_seq_len: int = DEFAULT_MAX_SEQ_LEN, pad_multiple: int = 16
    ) -> None:
        from tokenizers import Tokenizer

        path = Path(tokenizer_file)
        if not path.is_file():
            raise ModelFormatError(path, "tokenizer.json not found")
        self._tok = Tokenizer.from_file(str(path))
        # The pad id the tokenizer was saved with (MPNet/RoBERTa: '<pad>' = 1, BERT: '[PAD]' = 0), read
        # before padding is switched off (it is done here, bucketed); a file without one falls back to
        # the usual pad tokens by name.
        self.pad_id = pad_token_id(self._tok)
        self._tok.no_padding()
        self._tok.enable_truncation(max_length=max_seq_len)
        self.max_seq_len = max_seq_len
        self.pad_multiple = pad_multiple

    @classmethod
    def from_model_dir(
        cls, model_dir: str | Path, max_seq_len: int = DEFAULT_MAX_SEQ_LEN, pad_multiple: int = 16
    ) -> BatchTokenizer:
        """Use the directory's tokenizer.json, building it from the slow vocab files once if it is missing."""
        d = Path(model_dir)
        tok_file = d / "tokenizer.json"
        if not tok_file.is_file():
            try:
                from transformers import AutoTokenizer
            except ModuleNotFoundError as exc:
                # Bundles and finpulse checkpoints carry tokenizer.json; only a bare vocab needs transformers.
                raise ModelFormatError(
                    d, f"no tokenizer.json, and converting the vocab files needs {missing_extra(exc, 'it') or exc}"
                ) from exc
            try:
                AutoTokenizer.from_pretrained(str(d), local_files_only=True, use_fast=True).save_pretrained(str(d))
            except Exception as exc:  # noqa: BLE001 - surface any loader failure as a format error
                raise ModelFormatError(d, f"no tokenizer.json and no loadable tokenizer ({exc})") from exc
        return cls(tok_file, max_seq_len=max_seq_len, pad_multiple=pad_multiple)

    def tokenize(self, texts: Sequence[str]) -> TokenizedTexts:
        """Tokenize all texts in one call into the Rust tokenizer (it parallelises internally)."""
        encs = self._tok.encode_batch(list(texts), add_special_tokens=True)
        ids = [e.ids for e in encs]
        return TokenizedTexts(ids=ids, lengths=np.fromiter((len(i) for i in ids), dtype=np.int64, count=len(ids)))

    def vocab(self) -> dict[str, int]:
        """Token text to id, special tokens included."""
        return dict(self._tok.get_vocab(with_added_tokens=True))

    def padded_len(self, longest: int) -> int:
        return min(round_up(max(longest, 1), self.pad_multiple), max(self.max_seq_len, longest))

    def collate(
        self, tok: TokenizedTexts, indices: Sequence[int] | np.ndarray, length: int | None = None
    ) -> EncodedBatch:
        """Pad the chosen texts to their longest member, rounded up to the bucket size, or to exactly ``length``
        tokens when given (longer texts cut), e.g. to line up with another tokenizer's batch of the same texts."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size == 0:
            raise ValueError("cannot collate an empty batch")
        seq = self.padded_len(int(tok.lengths[idx].max())) if length is None else length
        input_ids = np.full((idx.size, seq), self.pad_id, dtype=np.int64)
        mask = np.zeros((idx.size, seq), dtype=np.int64)
        for row, i in enumerate(idx):
            ids = tok.ids[int(i)] if length is None else tok.ids[int(i)][:seq]
            input_ids[row, : len(ids)] = ids
            mask[row, : len(ids)] = 1
        return EncodedBatch(input_ids=input_ids, attention_mask=mask)

    def encode_fixed(self, texts: Sequence[str], length: int) -> EncodedBatch:
        """Pad every text to exactly ``length`` tokens (the textbook way; used by benchmarks as a baseline)."""
        tok = self.tokenize(texts)
        input_ids = np.full((len(texts), length), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(texts), length), dtype=np.int64)
        for row, ids in enumerate(tok.ids):
            ids = ids[:length]
            input_ids[row, : len(ids)] = ids
            mask[row, : len(ids)] = 1
        return EncodedBatch(input_ids=input_ids, attention_mask=mask)
