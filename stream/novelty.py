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
and off the event loop (a thread of its own).
"""

from __future__ import annotations

import functools
import math
import re
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
_POLY = 0x01000193  # the FNV prime, as the base of the shingle hash (any odd 32-bit number with mixed bits)
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


def ticker_shingles(ticker: str) -> list[bytes]:
    """The ``TICKER_WEIGHT`` salted shingles of one ticker."""
    return [f"\x00{ticker.upper()}#{j}".encode() for j in range(TICKER_WEIGHT)]


def shingles(text: str, tickers: Sequence[str] = (), k: int = SHINGLE_CHARS) -> list[bytes]:
    """The set a MinHash summarises (the definition; :class:`Sketcher` computes the same, batched): distinct
    byte ``k``-grams of the normalised UTF-8 text (the whole text when not longer than ``k``), plus
    ``TICKER_WEIGHT`` salted shingles per ticker."""
    t = normalise(text).encode("utf-8", "surrogatepass")
    out = {t} if len(t) <= k else {t[i : i + k] for i in range(len(t) - k + 1)}
    for tk in tickers:
        out.update(ticker_shingles(tk))
    return list(out)


def shingle_hash(data: bytes) -> int:
    """32-bit hash of one shingle: the polynomial sum of its bytes in base ``_POLY`` (mod 2**32), what
    :class:`Sketcher` computes for every k-gram of a batch at once with numpy."""
    h = 0
    for byte in data:
        h = (h * _POLY + byte) & 0xFFFFFFFF
    return h


@functools.lru_cache(maxsize=65_536)
def _ticker_hashes(ticker: str) -> tuple[int, ...]:
    return tuple(shingle_hash(x) for x in ticker_shingles(ticker))


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


# MurmurHash3's 32-bit finaliser, the pre-mix datasketch's affine32 scheme applies to each shingle hash.
_FMIX32 = (np.uint32(16), np.uint32(0x85EBCA6B), np.uint32(13), np.uint32(0xC2B2AE35), np.uint32(16))
_MAX32 = np.uint32(0xFFFFFFFF)


class Sketcher:
    """Band keys of a batch of texts: ``bands`` hex strings an event, the same for equal normalised texts.

    The MinHash is datasketch's (its ``affine32`` scheme and seeded permutations, with
    :func:`shingle_hash`), computed for the whole batch at once: datasketch builds one object per text from
    a Python list of shingles, about 80 us a tweet here with the shingling, a third of the null pipeline's
    budget; here every byte k-gram of the batch is hashed and permuted in a few numpy passes. A unit test
    checks that the values are exactly datasketch's ``MinHash`` of :func:`shingles`.
    """

    def __init__(self, params: NoveltyParams) -> None:
        self.params = params
        # The permutations (odd a, b, mod 2**32) exactly as datasketch draws them for this seed.
        ref = MinHash(num_perm=params.num_perm, seed=SEED, hashfunc=shingle_hash, scheme="affine32")
        perm = np.asarray(ref.permutations, dtype=np.uint32)
        self._a = perm[0].reshape(1, -1)
        self._b = perm[1].reshape(1, -1)
        # k-gram hash = sum of byte_j * POLY^(k-1-j): the powers, mod 2**32.
        self._pow = np.array([pow(_POLY, SHINGLE_CHARS - 1 - j, 1 << 32) for j in range(SHINGLE_CHARS)], np.uint32)
        self._band_mix = _MIX[: params.rows].reshape(1, 1, params.rows)
        self._band_salt = (np.arange(params.bands, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)).reshape(1, -1)

    def _permuted_min(self, hv: np.ndarray, starts: np.ndarray) -> np.ndarray:
        """Per segment of ``hv`` (segments begin at ``starts``, none empty): the min of each permutation."""
        s1, m1, s2, m2, s3 = _FMIX32
        with np.errstate(over="ignore"):
            hv = hv ^ (hv >> s1)
            hv *= m1
            hv ^= hv >> s2
            hv *= m2
            hv ^= hv >> s3
            phv = hv.reshape(-1, 1) * self._a + self._b  # uint32: wraps, i.e. mod 2**32
        return np.minimum.reduceat(phv, starts, axis=0)

    def signatures(self, texts: Sequence[str], tickers: Sequence[Sequence[str]] | None = None) -> np.ndarray:
        """(n, num_perm) MinHash values (uint64, each below 2**32): what datasketch's MinHash gives each text's
        :func:`shingles`."""
        n, k = len(texts), SHINGLE_CHARS
        sig = np.full((n, self.params.num_perm), _MAX32, dtype=np.uint32)
        if n == 0:
            return sig.astype(np.uint64)
        docs = [normalise(t).encode("utf-8", "surrogatepass") for t in texts]
        sizes = np.fromiter((len(d) for d in docs), dtype=np.int64, count=n)
        long_ = sizes > k
        # Every k-gram of every long text, one numpy pass: windows over the concatenated bytes, keeping those
        # that start at least k-1 bytes before their text's end (none spans two texts).
        if long_.any():
            buf = np.frombuffer(b"".join(docs), dtype=np.uint8).astype(np.uint32)
            ends = np.cumsum(sizes)
            begins = ends - sizes
            win = np.lib.stride_tricks.sliding_window_view(buf, k)
            counts = np.where(long_, sizes - k + 1, 0)
            first = np.repeat(begins, counts)
            offs = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
            with np.errstate(over="ignore"):
                hv = (win[first + offs] * self._pow).sum(axis=1, dtype=np.uint32)
            seg = np.concatenate(([0], np.cumsum(counts[long_])[:-1]))
            sig[long_] = self._permuted_min(hv, seg)
        # A text of at most k bytes is one shingle, itself; tickers add their salted shingles.
        extra: list[int] = []
        extra_doc: list[int] = []
        tks: Sequence[Sequence[str]] = tickers if tickers is not None else [()] * n
        for i, (d, ts) in enumerate(zip(docs, tks, strict=True)):
            if len(d) <= k:
                extra.append(shingle_hash(d))
                extra_doc.append(i)
            for t in ts:
                h = _ticker_hashes(t.upper())
                extra.extend(h)
                extra_doc.extend([i] * len(h))
        if extra:
            order = np.argsort(np.asarray(extra_doc), kind="stable")
            doc_sorted = np.asarray(extra_doc)[order]
            rows, seg = np.unique(doc_sorted, return_index=True)
            mins = self._permuted_min(np.asarray(extra, dtype=np.uint32)[order], seg)
            sig[rows] = np.minimum(sig[rows], mins)
        return sig.astype(np.uint64)

    def band_keys(self, texts: Sequence[str], tickers: Sequence[Sequence[str]] | None = None) -> list[list[str]]:
        """Per text (and the tickers its event is about), one 8-hex-digit key per band (band index mixed in, so
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
        keys = (h >> np.uint64(32)).tolist()
        return [[f"{k:08x}" for k in row] for row in keys]


def store_kwargs(settings: StreamSettings) -> dict[str, int]:
    """The window store's novelty arguments from the settings (horizon 0: novelty off)."""
    params = settings.novelty_params()
    if params is None:
        return {"novelty_horizon_s": 0, "novelty_min_votes": 1}
    return {"novelty_horizon_s": settings.novelty_horizon_seconds, "novelty_min_votes": params.min_votes}
