"""Worker settings under which a short burst of negatives on one ticker raises an alert in a replay."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from stream.events import extract_cashtags
from stream.novelty import NoveltyParams, Sketcher
from stream.settings import StreamSettings

# Minute buckets, a 15-minute recent window against the 3 hours before it, at least 5 events;
# replay time (event time only), so which buckets close does not depend on batching.
REPLAY_SURGE: dict[str, Any] = {
    "bucket_seconds": 60,
    "alert_window_seconds": 900,
    "alert_baseline_seconds": 3 * 3600,
    "alert_min_count": 5,
    "allowed_lateness_seconds": 3600,
    "max_batch_size": 32,
    "max_wait_ms": 100,
    "time_mode": "replay",
}

# What makes one negative story differ from the next: a burst of reposts of one story is not a surge
# (the rule counts novel events, stream.novelty), so a test burst is made of distinct stories.
STORY_DETAILS = (
    "as the finance chief resigns",
    "after a short seller report",
    "ahead of a delayed annual filing",
    "in heavy Frankfurt trading",
    "as auditors flag accounting gaps",
    "after a key customer walks away",
    "while bond spreads widen sharply",
    "as a factory fire halts output",
    "after regulators raid the head office",
    "as union workers strike nationwide",
    "after a downgrade to junk",
    "as the dividend is suspended",
    "after losing a patent ruling",
    "as insiders dump their stock",
    "after a failed merger vote",
    "as hackers leak customer data",
    "after a product recall in Europe",
    "as lenders call in loans",
    "after the founder is arrested",
    "as sales collapse in China",
    "after guidance is withdrawn",
    "as pension liabilities balloon",
    "after the exchange issues a warning",
    "as the board fires its auditor",
)


def story_candidates(ticker: str, phrases: Sequence[str], n: int) -> list[str]:
    """``n`` candidate stories on ``ticker``: each phrase with each detail in turn."""
    return [
        f"${ticker} {phrases[i % len(phrases)]} {STORY_DETAILS[(i // len(phrases) + i) % len(STORY_DETAILS)]}"
        for i in range(n)
    ]


def distinct_stories(texts: Sequence[str], want: int) -> list[str]:
    """The first ``want`` of ``texts`` of which no two are near-duplicates under the default novelty settings
    (checked with the worker's own sketcher, not assumed)."""
    s = StreamSettings()
    params = NoveltyParams(bands=s.novelty_bands, rows=s.novelty_rows, threshold=s.novelty_threshold)
    # With the tickers the worker reads from each text's cashtags, as it sketches them.
    keys = Sketcher(params).band_keys(list(texts), [extract_cashtags(t) for t in texts])
    picked: list[int] = []
    for i in range(len(texts)):
        if all(sum(a == b for a, b in zip(keys[i], keys[j], strict=True)) < params.min_votes for j in picked):
            picked.append(i)
            if len(picked) == want:
                return [texts[k] for k in picked]
    raise AssertionError(f"only {len(picked)} of {len(texts)} candidate stories are distinct; need {want}")


def negative_stories(clf: Any, ticker: str, want: int, phrases: Sequence[str]) -> list[str]:
    """``want`` distinct stories on ``ticker`` that ``clf`` labels negative (checked, never assumed), no two of
    them near-duplicates: a burst of reposts of one story is not a surge, the rule counts novel events."""
    cands = story_candidates(ticker, phrases, len(phrases) * len(STORY_DETAILS))
    labels = clf.classify(cands)["sentiment"].argmax(axis=1)
    return distinct_stories([t for t, lab in zip(cands, labels, strict=True) if int(lab) == 0], want)
