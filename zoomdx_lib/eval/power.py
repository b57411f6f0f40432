"""How far a claim's interval decides it: the deciding rule, its power, and the spread over trainings.

A claim (better − worse on Align, Gap or ECE) is *decided* when its 95 % interval excludes 0 or when it is a
powered null: its half-width is at most :data:`DECIDE_HALF_WIDTH` of its metric. :func:`power_row` adds the
smallest effect the interval would detect and the cases it would need; :func:`seed_interval` a t-interval
over the seeds' own differences (how far the claim holds across trainings).
"""
from __future__ import annotations

import numpy as np
from scipy import stats

# Deciding thresholds of the issue: a claim is decided when its interval excludes 0 or is this narrow.
DECIDE_HALF_WIDTH = {"align": 0.05, "gap": 0.08, "ece10": 0.03}
Z_ALPHA, Z_POWER = 1.96, 0.84   # two-sided 5 % test, 80 % power
MIN_CASES = 30   # below this a bootstrap interval is no evidence either way: nothing is decided


def decided_claim(row: dict, half_width: float) -> bool:
    """A claim is decided when its interval excludes 0, or when it is a powered null (half-width at most the
    metric's :data:`DECIDE_HALF_WIDTH`); never on fewer than :data:`MIN_CASES` cases.

    >>> decided_claim(dict(metric="align", low=0.01, high=0.2, n=120), 0.095), decided_claim(dict(metric="align", low=0.0, high=0.0, n=2), 0.0)
    (True, False)
    """
    if not row.get("n") or row["n"] < MIN_CASES or not np.isfinite(half_width):
        return False
    target = DECIDE_HALF_WIDTH.get(row["metric"])
    return bool(row["low"] > 0 or row["high"] < 0 or (target is not None and half_width <= target))


def seed_interval(per_run: str) -> dict:
    """A 95 % t-interval over the seeds' own differences (``per_run``, "+0.010, -0.020, ..."): how far the
    claim holds across trainings, which the case-resampled interval (the models held fixed) does not show.
    NaN with fewer than two seeds.

    >>> r = seed_interval("+0.10, +0.20, +0.30")
    >>> round(r["seed_low"], 3), round(r["seed_high"], 3), r["seed_sign"]
    (-0.048, 0.448, 'not separable')
    """
    d = np.array([float(x) for x in str(per_run).split(",") if x.strip() not in ("", "nan")])
    if len(d) < 2:
        return dict(seed_low=float("nan"), seed_high=float("nan"), seed_sign="")
    half = float(stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d)))
    low, high = float(d.mean() - half), float(d.mean() + half)
    return dict(seed_low=low, seed_high=high, seed_sign="above 0" if low > 0 else "below 0" if high < 0 else "not separable")


def power_row(row: dict) -> dict:
    """Half-width of a claim's 95 % interval, the smallest effect its n detects at 80 % power, and the cases
    the study would need to decide it (interval half-width at the deciding threshold, or excluding 0 at
    the observed effect), from a claims row with delta, low, high and n.

    >>> r = power_row(dict(metric="align", delta=0.02, low=-0.08, high=0.12, n=360))
    >>> round(r["half_width"], 3), round(r["min_detectable"], 3), r["n_to_decide"]
    (0.1, 0.143, 1440)
    """
    hw = (row["high"] - row["low"]) / 2
    out = dict(half_width=hw, min_detectable=hw * (Z_ALPHA + Z_POWER) / Z_ALPHA, n_to_decide=None)
    if not np.isfinite(hw) or not row.get("n"):
        return out
    target = DECIDE_HALF_WIDTH.get(row["metric"])
    if decided_claim(row, hw):
        out["n_to_decide"] = int(row["n"])
        return out
    need = [row["n"] * (hw / target) ** 2] if target else []
    if abs(row["delta"]) > 0:   # the n at which the observed effect would exclude 0
        need.append(row["n"] * (hw / abs(row["delta"])) ** 2)
    out["n_to_decide"] = int(np.ceil(min(need) - 1e-9)) if need else None
    return out
