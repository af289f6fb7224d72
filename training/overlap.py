"""Which texts of one collection are copies of texts in another: the same text after normalising, or a near copy.

Used to keep validation texts out of the masked-LM corpus (``training.dapt``) and to score a model
on the validation rows that have no copy in its training file (``training.train``): the shared
financial-news sets carry the same headline in both files, often with the feed's ``$TICKER - ``
prefix, so part of a validation score is recall, not generalisation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

#: word-pair Jaccard from which one text counts as a near copy of another
NEAR_COPY = 0.7
#: words per shingle for the near-duplicate test: pairs, so reordered headlines still differ
SHINGLE = 2
MINHASH_PERM = 64
#: how far below the near-duplicate threshold LSH looks for candidates
LSH_SLACK = 0.25

_URL = re.compile(r"https?://\S+|www\.\S+")
_RT = re.compile(r"^rt\s+@\w+:?\s*")
_WORD = re.compile(r"[a-z0-9$#%]+")


def normalise_text(text: str) -> str:
    """The form two texts are compared in: lower case, no links or retweet prefix, words only."""
    s = _URL.sub(" ", text.lower())
    s = _RT.sub("", s.strip())
    return " ".join(_WORD.findall(s))


def shingles(norm: str) -> set[bytes]:
    words = norm.split()
    if len(words) < SHINGLE:
        return {w.encode() for w in words}
    return {" ".join(words[i : i + SHINGLE]).encode() for i in range(len(words) - SHINGLE + 1)}


@dataclass
class Exclusion:
    """Which corpus texts were left out because they match a validation text, and how."""

    kept: list[str]
    exact: int = 0
    near: int = 0
    examples: list[tuple[str, str]] = field(default_factory=list)


def exclude_validation(corpus: list[str], validation: list[str], threshold: float) -> Exclusion:
    """Drop every corpus text equal (normalised) or near-equal (shingle Jaccard >= threshold) to a validation text.

    MinHash LSH finds the candidates; each candidate is confirmed on its exact shingle Jaccard, so
    the estimate's noise can only add a comparison, never decide on its own.
    """
    from datasketch import MinHash, MinHashLSH

    valid_norm = [normalise_text(v) for v in validation]
    exact_keys = {v for v in valid_norm if v}
    valid_sh = [shingles(v) for v in valid_norm]
    # LSH is probabilistic: a pair just above the threshold can miss its band. Asking it for pairs
    # well below the threshold makes such a miss vanishingly rare; the exact check then decides.
    lsh = MinHashLSH(threshold=max(0.2, threshold - LSH_SLACK), num_perm=MINHASH_PERM)
    for i, mh in enumerate(MinHash.bulk([sorted(s) for s in valid_sh], num_perm=MINHASH_PERM)):
        if valid_sh[i]:
            lsh.insert(str(i), mh, check_duplication=False)
    out = Exclusion(kept=[])
    norms = [normalise_text(t) for t in corpus]
    sh = [shingles(n) for n in norms]
    hashes = MinHash.bulk([sorted(s) for s in sh], num_perm=MINHASH_PERM)
    for text, norm, own, mh in zip(corpus, norms, sh, hashes, strict=True):
        if norm in exact_keys:
            out.exact += 1
            continue
        match = None
        if own:
            for key in lsh.query(mh):
                other = valid_sh[int(key)]
                if len(own & other) / len(own | other) >= threshold:
                    match = int(key)
                    break
        if match is not None:
            out.near += 1
            if len(out.examples) < 5:
                out.examples.append((text, validation[match]))
            continue
        out.kept.append(text)
    return out
