"""The novelty sketch without Redis: normalisation, shingles, the LSH arithmetic, and band keys that agree
with the similarity they estimate (the Redis side is tests/integration/test_novelty.py)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from datasketch import MinHash
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.novelty import SEED, TICKER_WEIGHT, NoveltyParams, Sketcher, normalise, shingle_hash, shingles
from stream.settings import StreamSettings

PARAMS = NoveltyParams(bands=12, rows=4, threshold=0.7)


def test_normalise_drops_what_is_not_the_story() -> None:
    raw = "RT @WSJ: Amazon's workforce has TRIPLED in 3 years http://t.co/abc $AMZN @someone http://t.co/nRfkBM…"
    assert normalise(raw) == "amazon s workforce has tripled in 3 years $amzn"


def test_shingles_and_ticker_weight() -> None:
    assert shingles("abc") == [b"abc"]
    plain = set(shingles("shares fall on weak guidance"))
    tagged = set(shingles("shares fall on weak guidance", ["aapl"]))
    assert plain < tagged and len(tagged - plain) == TICKER_WEIGHT
    assert set(shingles("x y", ["AAPL"])) == set(shingles("x y", ["aapl"]))


def test_lsh_arithmetic() -> None:
    assert PARAMS.num_perm == 48
    # 3 of 12 bands estimate (3/12)^(1/4) = 0.707 >= 0.7; 2 bands (0.639) do not.
    assert PARAMS.min_votes == 3
    assert PARAMS.similarity(PARAMS.min_votes) >= PARAMS.threshold > PARAMS.similarity(PARAMS.min_votes - 1)
    assert PARAMS.similarity(0) == 0.0 and PARAMS.similarity(12) == 1.0
    assert PARAMS.novelty(0) == 1.0 and PARAMS.novelty(12) == 0.0
    with pytest.raises(ValueError):
        NoveltyParams(bands=4, rows=9, threshold=0.7)
    with pytest.raises(ValueError):
        NoveltyParams(bands=4, rows=4, threshold=0.0)


def test_settings_give_the_params_or_none() -> None:
    assert StreamSettings().novelty_params() == PARAMS
    assert StreamSettings(novelty_enabled=False).novelty_params() is None


def test_band_keys_are_stable_and_shaped() -> None:
    sk = Sketcher(PARAMS)
    a = sk.band_keys(["Pfizer renews bid interest in AstraZeneca"], [["PFE"]])
    b = Sketcher(PARAMS).band_keys(["RT @x: Pfizer renews bid interest in AstraZeneca http://t.co/q"], [["PFE"]])
    assert a == b  # a repost, and a fresh sketcher (another worker) gives the same keys
    assert len(a[0]) == 12 and all(len(k) == 8 and int(k, 16) >= 0 for k in a[0])
    assert len(set(a[0])) == 12  # equal values in two bands still give two keys
    assert sk.band_keys([]) == []


def test_batched_signatures_are_datasketch_minhashes() -> None:
    texts = [
        "Pfizer renews bid interest in AstraZeneca http://t.co/x",
        "",  # nothing left: one empty shingle
        "ab",  # shorter than a shingle: the text itself
        "hello",  # exactly one shingle long
        "Ünïcode – dashes and “quotes” café $NESN.SW",
        "RT @a: same words same words same words",
    ]
    tickers = [["PFE"], [], ["X"], [], ["NESN.SW"], ["AAPL", "msft"]]
    sig = Sketcher(PARAMS).signatures(texts, tickers)
    ref = MinHash.bulk(
        [shingles(t, k) for t, k in zip(texts, tickers, strict=True)],
        num_perm=PARAMS.num_perm,
        seed=SEED,
        hashfunc=shingle_hash,
        scheme="affine32",
    )
    assert np.array_equal(sig, np.stack([m.hashvalues for m in ref]).astype(np.uint64))


def _jaccard(x: set[bytes], y: set[bytes]) -> float:
    return len(x & y) / len(x | y)


@settings(max_examples=30, deadline=None)
@given(st.integers(min_value=0, max_value=10_000))
def test_shared_bands_follow_the_jaccard_similarity(seed: int) -> None:
    # Two random texts made to overlap by a random amount: the bands they share are binomial with
    # p = J^rows; check the count against that distribution with a generous margin (5 sigma).
    rng = random.Random(seed)
    words = [f"w{rng.randrange(10_000)}" for _ in range(60)]
    keep = rng.randint(20, 60)
    a = " ".join(words)
    b = " ".join(words[:keep] + [f"v{rng.randrange(10_000)}" for _ in range(60 - keep)])
    j = _jaccard(set(shingles(a)), set(shingles(b)))
    ka, kb = Sketcher(PARAMS).band_keys([a, b])
    shared = sum(x == y for x, y in zip(ka, kb, strict=True))
    p = j**PARAMS.rows
    sigma = math.sqrt(PARAMS.bands * p * (1 - p)) + 0.5
    assert abs(shared - PARAMS.bands * p) <= 5 * sigma + 1
