"""Evaluation metrics of Sections 3.1-3.3: Acc, mIoU, SAcc, Align, ECE, Entropy Gap, and helpers.

Long because every metric of Sections 3.1-3.3 and the bootstrap that puts intervals on them are
here, each with its definition, units and doctests.

All scores are 0-1 fractions unless stated (multiply by 100 for the paper's percent tables);
entropies are in bits (log base 2) by default. Labels are canonical label strings or
``None`` for an invalid answer, which is always wrong. Group statistics (mode, kappa, ties,
invalid answers) follow :mod:`zoomdx_lib.rl.rewards` exactly (Eq. 1 has one definition). A metric over an empty selection
is ``nan``, never an exception.

ECE binning: ``n_bins`` equal-width bins over [0, 1]; bin m holds [m/M, (m+1)/M), except
that a confidence of exactly 1.0 goes into the LAST bin [(M-1)/M, 1] and 0.0 into the first.
torchmetrics (1.9) ``BinaryCalibrationError`` instead gives 1.0 a bin of its own (its
``bucketize(..., right=True) - 1`` puts 1.0 at index M of M+1 accumulators), see :func:`ece`.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Callable, NamedTuple, Optional, Sequence

import numpy as np

from ..config import PAPER
from ..geometry import iou
from ..rl.rewards import Label, is_confident, mode_and_kappa

DELTA = PAPER.delta


def _mask(n: int, mask) -> np.ndarray:
    if mask is None:
        return np.ones(n, dtype=bool)
    m = np.asarray(mask, dtype=bool).reshape(-1)
    if m.shape[0] != n:
        raise ValueError(f"mask has {m.shape[0]} entries for {n} samples")
    return m


def _same_length(**arrays) -> int:
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"inputs must have the same length, got {lengths}")
    return next(iter(lengths.values())) if lengths else 0


# ---------------------------------------------------------------------------------------------
# Section 3.1: greedy accuracy and localisation
# ---------------------------------------------------------------------------------------------

def accuracy(preds: Sequence[Label], labels: Sequence[Label], mask=None) -> float:
    """Fraction (0-1) of samples whose prediction equals the label; invalid (None) is wrong.

    `mask` (bool per sample) selects the samples scored; the paper's Acc is greedy accuracy
    on consensus samples, i.e. ``mask = (c == 1)``. nan when nothing is selected.

    >>> accuracy(["A", "B", None, "A"], ["A", "A", "A", "A"])
    0.5
    >>> accuracy(["A", "B", None, "A"], ["A", "A", "A", "A"], mask=[1, 0, 0, 1])
    1.0
    """
    n = _same_length(preds=preds, labels=labels)
    m = _mask(n, mask)
    hits = [p is not None and p == y for p, y, k in zip(preds, labels, m) if k]
    return float(np.mean(hits)) if hits else math.nan


def mean_iou(pred_boxes, true_boxes, mask=None) -> float:
    """Mean IoU (0-1) of predicted vs true (x1, y1, x2, y2) boxes in the same pixel frame.

    A missing predicted box (None) scores IoU 0. nan when nothing is selected.

    >>> mean_iou([(0, 0, 10, 10), None], [(5, 0, 15, 10), (0, 0, 1, 1)])
    0.16666666666666666
    """
    n = _same_length(pred_boxes=pred_boxes, true_boxes=true_boxes)
    m = _mask(n, mask)
    vals = [0.0 if p is None else iou(p, t) for p, t, k in zip(pred_boxes, true_boxes, m) if k]
    return float(np.mean(vals)) if vals else math.nan


# ---------------------------------------------------------------------------------------------
# Section 3.2: consensus-based metrics
# ---------------------------------------------------------------------------------------------

def consensus(answers_per_case: Sequence[Sequence[Label]]) -> tuple[list[Label], np.ndarray]:
    """Mode and kappa (Eq. 1, 0-1) of each case's rollout answers, via `rl.rewards.mode_and_kappa`.

    >>> consensus([["A", "A", "B", None], [None, None]])
    (['A', None], array([0.5, 0. ]))
    """
    pairs = [mode_and_kappa(list(a)) for a in answers_per_case]
    return [p[0] for p in pairs], np.array([p[1] for p in pairs], dtype=np.float64)


def selective_accuracy(modes: Sequence[Label], kappas, labels: Sequence[Label],
                       delta: float = DELTA) -> tuple[float, int]:
    """SAcc: accuracy (0-1) of the consensus on the cases with kappa >= delta, and how many.

    Returns ``(sacc, n_selected)``; sacc is nan when no case is selected.

    >>> selective_accuracy(["A", "B", "A"], [1.0, 0.75, 0.5], ["A", "A", "A"])
    (0.5, 2)
    >>> selective_accuracy(["A"], [0.5], ["A"])
    (nan, 0)
    """
    n = _same_length(modes=modes, kappas=kappas, labels=labels)
    sel = np.array([is_confident(k, delta) for k in np.asarray(kappas, dtype=float)], dtype=bool).reshape(n)
    return accuracy(modes, labels, mask=sel), int(sel.sum())


def alignment(kappas, cs, delta: float = DELTA) -> float:
    """Align: fraction (0-1) of cases where the model's decision 1[kappa >= delta] equals c.

    >>> alignment([1.0, 0.5, 0.875, 0.25], [1, 0, 0, 1])
    0.5
    """
    n = _same_length(kappas=kappas, cs=cs)
    if n == 0:
        return math.nan
    confident = np.asarray(kappas, dtype=float).reshape(n) >= delta   # is_confident, for every case at once
    return float(np.mean(confident.astype(int) == np.asarray(cs).astype(int).reshape(n)))


class ReliabilityBin(NamedTuple):
    """One bin of a reliability diagram: edges (0-1), mean confidence, accuracy (nan if empty), count."""

    lower: float
    upper: float
    mean_confidence: float
    accuracy: float
    count: int


def _calibration_inputs(confidences, correct) -> tuple[np.ndarray, np.ndarray]:
    conf = np.asarray(confidences, dtype=np.float64).reshape(-1)
    corr = np.asarray(correct, dtype=np.float64).reshape(-1)
    if conf.shape != corr.shape:
        raise ValueError(f"confidences ({conf.shape[0]}) and correct ({corr.shape[0]}) differ in length")
    if conf.size and (not np.all(np.isfinite(conf)) or conf.min() < 0 or conf.max() > 1):
        raise ValueError("confidences must be finite values in [0, 1]")
    if corr.size and not np.all(np.isin(corr, (0.0, 1.0))):
        raise ValueError("correct must hold 0/1 (or bool) values")
    return conf, corr


def bin_index(confidences, n_bins: int = 10) -> np.ndarray:
    """Bin (0 .. n_bins-1) of each confidence for equal-width bins over [0, 1].

    Bin m is [m/M, (m+1)/M); 1.0 goes into the last bin, 0.0 into the first.

    >>> bin_index([0.0, 0.1, 0.75, 0.99, 1.0], 10).tolist()
    [0, 1, 7, 9, 9]
    """
    if not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.searchsorted(edges, np.asarray(confidences, dtype=np.float64), side="right") - 1
    return np.clip(idx, 0, n_bins - 1)


def reliability_bins(confidences, correct, n_bins: int = 10) -> list[ReliabilityBin]:
    """Per-bin (lower, upper, mean confidence, accuracy, count) for a reliability diagram.

    `confidences` are 0-1 (e.g. kappa), `correct` 0/1 per case; binning as in :func:`bin_index`.
    Empty bins have count 0 and nan mean confidence and accuracy.

    >>> [tuple(round(v, 3) for v in b) for b in reliability_bins([0.2, 0.3, 0.9, 1.0], [0, 1, 1, 1], 2)]
    [(0.0, 0.5, 0.25, 0.5, 2), (0.5, 1.0, 0.95, 1.0, 2)]
    """
    conf, corr = _calibration_inputs(confidences, correct)
    idx = bin_index(conf, n_bins)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    out = []
    for m in range(n_bins):
        sel = idx == m
        k = int(sel.sum())
        out.append(ReliabilityBin(float(edges[m]), float(edges[m + 1]),
                                  float(conf[sel].mean()) if k else math.nan,
                                  float(corr[sel].mean()) if k else math.nan, k))
    return out


def ece(confidences, correct, n_bins: int = 10) -> float:
    """Expected calibration error (0-1): sum_m |B_m|/N * |acc(B_m) - conf(B_m)|.

    `confidences` are the top-label confidences in [0, 1] (here kappa of the consensus) and
    `correct` is 1[consensus == y]. Equal-width bins, 1.0 in the last bin (see :func:`bin_index`).
    nan for no cases.

    Relation to torchmetrics 1.9: ``BinaryCalibrationError(n_bins, norm="l1")(conf, correct)``
    computes this top-label ECE when fed the confidence as ``preds`` and the 0/1 correctness as
    ``target`` (its binary update uses preds as the confidence and target as the accuracy
    as they are -- it does *not* fold p < 0.5 to 1 - p; feeding P(positive class) and the
    class label instead gives a positive-class calibration, not top-label ECE). Its binning
    differs at exactly 1.0: ``bucketize(conf, linspace(0, 1, M+1), right=True) - 1`` sends
    1.0 to an extra (M+1)-th bin [1, 1] instead of [(M-1)/M, 1]. By the triangle inequality its
    value is >= ours, with equality when no confidence is 1.0, when no other confidence falls
    in [(M-1)/M, 1), or when those others are not under-confident (acc <= mean conf there).
    With G=8 kappas (multiples of 1/8) and M=10 the bin [0.9, 1) is always empty, so the two
    agree on every kappa ECE of the paper's setting.

    >>> round(ece([0.25, 0.25, 0.75, 0.75], [0, 1, 1, 1]), 4)
    0.25
    >>> round(ece([0.95, 1.0], [1, 0]), 4)   # one last bin: |0.5 - 0.975|; torchmetrics gives 0.525
    0.475
    """
    conf, corr = _calibration_inputs(confidences, correct)
    if conf.size == 0:
        return math.nan
    total = 0.0
    for b in reliability_bins(conf, corr, n_bins):
        if b.count:
            total += b.count / conf.size * abs(b.accuracy - b.mean_confidence)
    return float(total)


def answer_entropy(answers: Sequence[Label], base: float = 2) -> float:
    """Entropy of one case's empirical answer distribution over its G rollouts, in bits for base 2.

    Invalid answers (None) all fall into one extra category of their own ("invalid"), so
    [A, None] has 1 bit. nan for an empty list.

    >>> answer_entropy(["A", "A", "B", "B"]), answer_entropy(["A", "A", "A"]), answer_entropy(["A", None])
    (1.0, 0.0, 1.0)
    """
    if len(answers) == 0:
        return math.nan
    counts = np.array(list(Counter(("__valid__", a) if a is not None else ("__invalid__",)
                                   for a in answers).values()), dtype=np.float64)
    p = counts / counts.sum()
    h = -float(np.sum(p * np.log(p))) / math.log(base)
    return h if h > 0 else 0.0


def entropy_gap(answers_per_case: Sequence[Sequence[Label]], cs, base: float = 2) -> float:
    """Gap = mean entropy on c=0 cases - mean entropy on c=1 cases, in bits for base 2.

    Positive when the model hesitates more where sonographers disagree. nan when either side
    has no cases.

    >>> entropy_gap([["A", "B"], ["A", "A"], ["A", "A"]], [0, 1, 1])
    1.0
    """
    _same_length(answers_per_case=answers_per_case, cs=cs)
    return gap_of_entropies([answer_entropy(a, base) for a in answers_per_case], cs)


def gap_of_entropies(entropies, cs) -> float:
    """:func:`entropy_gap` from each case's answer entropy: mean on c=0 minus mean on c=1 (nan when either
    side has no cases).

    >>> gap_of_entropies([1.0, 0.0, 0.5], [0, 1, 1])
    0.75
    """
    H = np.asarray(entropies, dtype=np.float64).reshape(-1)
    c = np.asarray(cs, dtype=int).reshape(-1)
    if not np.any(c == 0) or not np.any(c == 1):
        return math.nan
    return float(H[c == 0].mean() - H[c == 1].mean())


def risk_coverage(kappas, correct) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Selective-prediction curve as the kappa threshold t moves from high to low.

    For each distinct kappa value t (descending) the cases with kappa >= t are kept; returns
    arrays ``(thresholds, coverage, selective_accuracy)`` with coverage the kept fraction
    (0-1, increasing) and selective accuracy the fraction of kept cases that are correct.

    >>> t, cov, acc = risk_coverage([1.0, 1.0, 0.5, 0.25], [1, 1, 0, 1])
    >>> t.tolist(), cov.tolist(), acc.round(3).tolist()
    ([1.0, 0.5, 0.25], [0.5, 0.75, 1.0], [1.0, 0.667, 0.75])
    """
    k = np.asarray(kappas, dtype=np.float64).reshape(-1)
    corr = np.asarray(correct, dtype=np.float64).reshape(-1)
    if k.shape != corr.shape:
        raise ValueError(f"kappas ({k.size}) and correct ({corr.size}) differ in length")
    thresholds = np.unique(k)[::-1]
    coverage = np.array([np.mean(k >= t) for t in thresholds], dtype=np.float64)
    sacc = np.array([corr[k >= t].mean() for t in thresholds], dtype=np.float64)
    return thresholds, coverage, sacc


# ---------------------------------------------------------------------------------------------
# uncertainty of the estimates
# ---------------------------------------------------------------------------------------------

def _take(a, idx: np.ndarray):
    if isinstance(a, np.ndarray):
        return a[idx]
    return [a[i] for i in idx]


def bootstrap(metric_fn: Callable[[Optional[np.ndarray]], dict], n: int, n_boot: int = 1000, alpha: float = 0.05,
              seed: int = 0) -> dict:
    """Percentile bootstrap over `n` cases of several metrics at once: ``{name: (point, low, high)}``.

    ``metric_fn(idx)`` returns a dict of floats computed on the cases `idx` (an index array drawn
    with replacement), or on all cases when `idx` is None (the point estimate). Each resample is
    drawn once and used for every metric. Replicates that are nan (e.g. SAcc with no selected case)
    are dropped per metric; if all are nan, low and high are nan. `alpha` = 0.05 gives a 95 %
    interval. Deterministic for a given `seed`.

    >>> x = np.array([0, 1, 1, 1])
    >>> p, lo, hi = bootstrap(lambda i: {"mean": float(np.mean(x if i is None else x[i]))}, 4, 200)["mean"]
    >>> p, lo <= p <= hi
    (0.75, True)
    """
    point = {k: float(v) for k, v in metric_fn(None).items()}
    if n == 0:
        return {k: (v, math.nan, math.nan) for k, v in point.items()}
    rng = np.random.default_rng(seed)
    reps = {k: np.empty(n_boot, dtype=np.float64) for k in point}
    for b in range(n_boot):
        m = metric_fn(rng.integers(0, n, size=n))
        for k in point:
            reps[k][b] = float(m[k])
    out = {}
    for k, v in point.items():
        r = reps[k][np.isfinite(reps[k])]
        lo, hi = np.quantile(r, [alpha / 2, 1 - alpha / 2]) if r.size else (math.nan, math.nan)
        out[k] = (v, float(lo), float(hi))
    return out


def bootstrap_ci(metric_fn: Callable[..., float], *arrays, n_boot: int = 1000, alpha: float = 0.05,
                 seed: int = 0) -> tuple[float, float, float]:
    """Percentile bootstrap over cases: ``(point, low, high)`` of ``metric_fn(*arrays)``.

    Cases are resampled with replacement using the same indices for every array (numpy arrays
    are indexed, other sequences become lists); see :func:`bootstrap`.

    >>> p, lo, hi = bootstrap_ci(lambda x: float(np.mean(x)), np.array([0, 1, 1, 1]), n_boot=200)
    >>> p, lo <= p <= hi
    (0.75, True)
    """
    if not arrays:
        raise ValueError("bootstrap_ci needs at least one array of cases")
    n = _same_length(**{f"array{i}": a for i, a in enumerate(arrays)})

    def fn(idx):
        return {"value": metric_fn(*(arrays if idx is None else [_take(a, idx) for a in arrays]))}
    return bootstrap(fn, n, n_boot, alpha, seed)["value"]


def mean_and_spread(values) -> tuple[float, float]:
    """(mean, sample std with ddof=1) of a metric over seeds, ignoring nan values.

    Units are those of `values`. std is nan with fewer than two finite values; both are nan
    when there are none.

    >>> m, s = mean_and_spread([0.6, 0.7, 0.8])
    >>> round(m, 6), round(s, 6)
    (0.7, 0.1)
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return math.nan, math.nan
    std = float(np.std(v, ddof=1)) if v.size > 1 else math.nan
    return float(v.mean()), std
