"""Report-text scores of the rationales: BLEU-1 and ROUGE-L (0-1), lowercased whitespace tokens."""
from __future__ import annotations

import math
from collections import Counter
from typing import Optional


def _tokens(text: Optional[str]) -> list[str]:
    return (text or "").lower().split()


def bleu1(candidate: str, reference: str) -> float:
    """BLEU-1 (0-1): clipped unigram precision times the brevity penalty.

    Lowercased, whitespace-tokenised. BP = 1 if len(cand) > len(ref) else exp(1 - len(ref)/len(cand)).
    An empty candidate (or reference) scores 0.

    >>> bleu1("the cat sat on the mat", "The cat is on the mat")
    0.8333333333333334
    >>> round(bleu1("the the the", "the cat is on the mat"), 4)   # (2/3) * exp(1 - 6/3)
    0.2453
    """
    cand, ref = _tokens(candidate), _tokens(reference)
    if not cand or not ref:
        return 0.0
    rc = Counter(ref)
    clipped = sum(min(n, rc[w]) for w, n in Counter(cand).items())
    precision = clipped / len(cand)
    bp = 1.0 if len(cand) > len(ref) else math.exp(1.0 - len(ref) / len(cand))
    return float(precision * bp)


def _lcs(a: list[str], b: list[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, yv in enumerate(b):
            cur.append(prev[j] + 1 if x == yv else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(candidate: str, reference: str, beta: float = 1.0) -> float:
    """ROUGE-L F-measure (0-1) from the longest common subsequence of the token lists.

    P = LCS/len(cand), R = LCS/len(ref), F = (1 + beta^2) P R / (R + beta^2 P). The default
    beta = 1 (F1) matches Google's rouge-score and torchmetrics; COCO-caption uses beta = 1.2.
    Lowercased, whitespace-tokenised; 0 when either side is empty or nothing matches.

    >>> round(rouge_l("the cat sat on the mat", "the cat is on the mat"), 4)   # LCS 5 of 6 and 6
    0.8333
    >>> round(rouge_l("a b c d", "a c"), 4)   # P 2/4, R 2/2 -> F1 2/3
    0.6667
    """
    cand, ref = _tokens(candidate), _tokens(reference)
    if not cand or not ref:
        return 0.0
    lcs = _lcs(cand, ref)
    if lcs == 0:
        return 0.0
    p, r = lcs / len(cand), lcs / len(ref)
    b2 = beta * beta
    return float((1 + b2) * p * r / (r + b2 * p))
