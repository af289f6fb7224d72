"""Story novelty: MinHash signatures of an event's text, cut into LSH bands that Redis looks up.

A reposted story (a retweet, the same headline on two wires, a bot's template with another link) is
not new information, and one story repeated 50 times must not read as a surge. Each event's text is
normalised, cut into character shingles and summarised by a MinHash signature (``datasketch``);
the signature is cut into ``bands`` bands of ``rows`` values and each band is hashed to a short key.
Two texts with Jaccard similarity ``s`` share a given band with probability ``s ** rows``.

The band keys go to Redis with the event (``stream/lua/apply.lua``), where an index per event-time
generation maps each band key to the earliest event that had it. The event's votes are the bands it
shares with its best earlier candidate; ``similarity = (votes / bands) ** (1 / rows)`` is the maximum
likelihood estimate of their Jaccard similarity, ``novelty = 1 - similarity``, and the event is a
near-duplicate of that candidate when the similarity reaches the threshold. All of this is per batch
and off the event loop (the tokenizer's thread): about 65 us an event here.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from datasketch import MinHash

if TYPE_CHECKING:
    from stream.settings import StreamSettings

# Links carry no story (the same tweet is posted with different t.co links), nor does the retweet
# marker with the handle of whoever retweeted, nor a mention.
_URL_RE = re.compile(r"https?://\S*|www\.\S+|\S+\u2026$")
_RT_RE = re.compile(r"^(?:rt\s+)?@\w+:?\s*")
_MENTION_RE = re.compile(r"@\w+")
_NON_WORD_RE = re.compile(r"[^\w$%.]+")
SHINGLE_CHARS = 5
# Each ticker an event is about enters its shingle set this many times (salted), so that one template filled
# in for two companies ("$AMZN News Alert: <link>" and "$XOM News Alert: <link>") is two stories, while a
# repost (same tickers) loses nothing. Eight shingles are about a third of a short tweet's set.
TICKER_WEIGHT = 8
SEED = 1
# Odd 64-bit multipliers that mix a band's MinHash values into one key (fixed: keys written by one
# worker must be found by every other, across restarts and versions).
_MIX = np.array(
    [
        0x9E3779B97F4A7C15,
        0xC2B2AE3D27D4EB4F,
        0x165667B19E3779F9,
        0xD6E8FEB86659FD93,
        0xFF51AFD7ED558CCD,
        0xC4CEB9FE1A85EC53,
        0x94D049BB133111EB,
        0xBF58476D1CE4E5B9,
    ],
    dtype=np.uint64,
)


def normalise(text: str) -> str:
    """The words of a story: lower case, links, retweet marker and mentions dropped, punctuation collapsed."""
    t = text.lower().strip()
    t = _RT_RE.sub("", t)
    t = _URL_RE.sub(" ", t)
    t = _MENTION_RE.sub(" ", t)
    return " ".join(_NON_WORD_RE.sub(" ", t).split())


def shingles(text: str, tickers: Sequence[str] = (), k: int = SHINGLE_CHARS) -> list[bytes]:
    """Distinct character ``k``-grams of the normalised text (the whole text when shorter than ``k``), plus
    ``TICKER_WEIGHT`` salted shingles per ticker."""
    t = normalise(text)
    if len(t) <= k:
        out = {t.encode("utf-8", "surrogatepass")}
    else:
        out = {t[i : i + k].encode("utf-8", "surrogatepass") for i in range(len(t) - k + 1)}
    for tk in tickers:
        out.update(f"\x00{tk.upper()}#{j}".encode() for j in range(TICKER_WEIGHT))
    return list(out)


@dataclass(frozen=True)
class NoveltyParams:
    """LSH shape and the near-duplicate threshold (settings ``FINPULSE_NOVELTY_*``)."""

    bands: int
    rows: int
    threshold: float

    def __post_init__(self) -> None:
        if self.bands < 1 or not 1 <= self.rows <= len(_MIX):
            raise ValueError(f"novelty bands={self.bands} x rows={self.rows} is not a usable LSH shape")
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"novelty threshold {self.threshold} must be in (0, 1]")

    @property
    def num_perm(self) -> int:
        return self.bands * self.rows

    @property
    def min_votes(self) -> int:
        """Fewest shared bands whose similarity estimate reaches the threshold."""
        return max(1, math.ceil(self.bands * self.threshold**self.rows - 1e-9))

    def similarity(self, votes: int) -> float:
        """Estimated Jaccard similarity with a candidate that shares ``votes`` bands (0 when none)."""
        if votes <= 0:
            return 0.0
        return float(min(1.0, (votes / self.bands) ** (1.0 / self.rows)))

    def novelty(self, votes: int) -> float:
        """1 - similarity to the most similar earlier event, rounded for the record (1.0: nothing like it)."""
        return round(1.0 - self.similarity(votes), 4)


class Sketcher:
    """Band keys of a batch of texts: ``bands`` hex strings an event, the same for equal normalised texts."""

    def __init__(self, params: NoveltyParams) -> None:
        self.params = params
        # CRC32 as the shingle hash: a C call, twice as fast as datasketch's default SHA-1 wrapper here,
        # and 32 bits is what MinHash keeps anyway.
        self._kwargs = {"num_perm": params.num_perm, "seed": SEED, "hashfunc": zlib.crc32, "scheme": "affine32"}
        self._band_mix = _MIX[: params.rows].reshape(1, 1, params.rows)
        self._band_salt = (np.arange(params.bands, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)).reshape(1, -1)

    def signatures(self, texts: Sequence[str], tickers: Sequence[Sequence[str]] | None = None) -> np.ndarray:
        """(n, num_perm) MinHash values (uint64, each below 2**32)."""
        if not texts:
            return np.zeros((0, self.params.num_perm), dtype=np.uint64)
        tks: Sequence[Sequence[str]] = tickers if tickers is not None else [()] * len(texts)
        hashes = MinHash.bulk([shingles(t, k) for t, k in zip(texts, tks, strict=True)], **self._kwargs)
        return np.stack([m.hashvalues for m in hashes]).astype(np.uint64)

    def band_keys(self, texts: Sequence[str], tickers: Sequence[Sequence[str]] | None = None) -> list[list[str]]:
        """Per text (and the tickers its event is about), one 12-hex-digit key per band (band index mixed in, so
        equal values in two bands differ)."""
        sig = self.signatures(texts, tickers)
        p = self.params
        with np.errstate(over="ignore"):
            cube = sig.reshape(len(texts), p.bands, p.rows)
            h = (cube * self._band_mix).sum(axis=2, dtype=np.uint64) ^ self._band_salt
            # A 64-bit finaliser (murmur3's), so every bit of the key depends on every value.
            h ^= h >> np.uint64(33)
            h *= np.uint64(0xFF51AFD7ED558CCD)
            h ^= h >> np.uint64(33)
        keys = (h >> np.uint64(16)).tolist()
        return [[f"{k:012x}" for k in row] for row in keys]


def store_kwargs(settings: StreamSettings) -> dict[str, int]:
    """The window store's novelty arguments from the settings (horizon 0: novelty off)."""
    params = settings.novelty_params()
    if params is None:
        return {"novelty_horizon_s": 0, "novelty_min_votes": 1}
    return {"novelty_horizon_s": settings.novelty_horizon_seconds, "novelty_min_votes": params.min_votes}
