"""The paper's claims, each judged by a paired bootstrap interval of a difference between two methods.

Two methods are evaluated on the same cases, so their difference is resampled case by case (one index
draw for both): the interval reflects how much the *difference* varies, which is much narrower than two
overlapping per-method intervals when the methods succeed and fail on the same cases. A claim is
``supported`` when the whole 95 % interval of (better − worse) lies on the claimed side of 0 (below 0
for ECE, where lower is better), ``contradicted`` when it lies wholly on the other side, and ``not
separable from noise`` otherwise. Pooled rows (e.g. liver + breast) resample the union of the cases.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..config import PAPER
from . import metrics as M
from .scores import calibration_metrics, greedy_metrics


@dataclass(frozen=True)
class Claim:
    """`better` beats `worse` on `metric` (computed from `mode` records: greedy or 8 sampled rollouts)."""

    text: str
    metric: str                  # a key of greedy_metrics (mode "greedy") or calibration_metrics ("sample")
    better: str
    worse: str
    higher_is_better: bool = True
    mode: str = "greedy"
    in_domain_only: bool = False  # judged on the training organs only (not on the zero-shot thyroid split)


CREDIT, GROUP = "grpo_uncertainty_credit", "grpo_uncertainty_group"
CLAIMS = (
    Claim("zoom beats no zoom (Acc)", "acc", "zoom_sft", "single_turn_sft", in_domain_only=True),
    Claim("uncertainty RL beats SFT on Align", "align", CREDIT, "zoom_sft", mode="sample"),
    Claim("uncertainty RL beats accuracy-only RL on Align", "align", CREDIT, "grpo_accuracy_only", mode="sample"),
    Claim("uncertainty RL beats SFT on Entropy Gap", "gap", CREDIT, "zoom_sft", mode="sample"),
    Claim("uncertainty RL beats accuracy-only RL on Entropy Gap", "gap", CREDIT, "grpo_accuracy_only", mode="sample"),
    Claim("uncertainty RL lowers ECE vs SFT", "ece10", CREDIT, "zoom_sft", higher_is_better=False, mode="sample"),
    Claim("uncertainty RL lowers ECE vs accuracy-only RL", "ece10", CREDIT, "grpo_accuracy_only",
          higher_is_better=False, mode="sample"),
    Claim("credit estimator beats paper-literal group estimator on Align", "align", CREDIT, GROUP, mode="sample"),
)
POOLED = {"liver+breast": ("test_liver", "test_breast")}


def paired_difference(better: Sequence[dict], worse: Sequence[dict], metric_fn: Callable[[list], dict],
                      keys: Sequence[str], n_boot: int = 1000, seed: int = 0) -> dict:
    """``{key: (point, low, high)}`` of ``metric_fn(better)[key] - metric_fn(worse)[key]``, 95 % percentile
    bootstrap with the same resampled cases for both methods. Records are matched by ``id``; a case missing
    from either list raises ValueError naming it.

    >>> rec = lambda i, ok: {"id": i, "c": 1, "label": "A", "rollouts": [{"answer": "A" if ok else "B",
    ...        "iou": 0.5, "tool_error": None, "fmt": 1.0}]}
    >>> a = [rec(i, True) for i in range(6)]
    >>> b = [rec(i, i < 3) for i in range(6)]
    >>> paired_difference(a, b, greedy_metrics, ["acc"], n_boot=200)["acc"][0]
    0.5
    """
    by_id = {r["id"]: r for r in worse}
    ids = [r["id"] for r in better]
    missing = sorted(set(ids) ^ set(by_id))
    if missing or len(ids) != len(by_id):
        first = f"case {missing[0]!r} is in only one list" if missing else "an id appears twice"
        raise ValueError(f"paired comparison needs the same cases for both methods ({first}); "
                         f"unmatched case ids: {missing[:5]}")
    b = list(better)
    w = [by_id[i] for i in ids]

    def fn(idx):
        mb = metric_fn(b if idx is None else [b[i] for i in idx])
        mw = metric_fn(w if idx is None else [w[i] for i in idx])
        return {k: float(mb[k]) - float(mw[k]) for k in keys}
    return M.bootstrap(fn, len(b), n_boot, seed=seed)


def verdict(low: float, high: float, higher_is_better: bool = True) -> str:
    """'supported' / 'contradicted' / 'not separable from noise' from the interval of (better − worse).

    >>> verdict(0.02, 0.3), verdict(-0.3, -0.01), verdict(-0.1, 0.2), verdict(-0.3, -0.01, higher_is_better=False)
    ('supported', 'contradicted', 'not separable from noise', 'supported')
    """
    if not (np.isfinite(low) and np.isfinite(high)):
        return "not measured"
    lo, hi = (low, high) if higher_is_better else (-high, -low)
    return "supported" if lo > 0 else "contradicted" if hi < 0 else "not separable from noise"


def paper_claims(results: dict, datasets: Sequence[str], seed: int = 0, n_boot: int = 1000,
                 delta: float = PAPER.delta, claims: Sequence[Claim] = CLAIMS, pooled: dict = POOLED) -> list[dict]:
    """One row per (claim, dataset or pool): the paired difference (better − worse) with its interval and
    verdict. `results` maps (method, dataset, mode, seed) to records (:func:`zoomdx_lib.eval.generate.
    evaluate_methods`); a claim whose methods were not evaluated is listed as 'not measured'."""
    metric_fns = {"greedy": greedy_metrics, "sample": lambda recs: calibration_metrics(recs, delta)}
    scopes = [(d, (d,)) for d in datasets] + [(name, parts) for name, parts in pooled.items()
                                                if all(p in datasets for p in parts)]
    rows = []
    for claim in claims:
        for name, parts in scopes:
            if claim.in_domain_only and "test_thyroid" in parts:
                continue
            row = dict(claim=claim.text, dataset=name, metric=claim.metric, better=claim.better, worse=claim.worse,
                       cross_domain="test_thyroid" in parts, n=0, delta=float("nan"), low=float("nan"),
                       high=float("nan"), verdict="not measured")
            got = [[results.get((m, d, claim.mode, seed)) for d in parts] for m in (claim.better, claim.worse)]
            if all(r is not None for side in got for r in side):
                recs = [[r for part in side for r in part] for side in got]
                point, low, high = paired_difference(recs[0], recs[1], metric_fns[claim.mode], [claim.metric],
                                                     n_boot, seed)[claim.metric]
                row.update(n=len(recs[0]), delta=point, low=low, high=high,
                           verdict=verdict(low, high, claim.higher_is_better))
            rows.append(row)
    return rows
