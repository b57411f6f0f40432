"""The paper's claims, each judged by a paired bootstrap interval of a difference between two methods.

Two methods are evaluated on the same cases, so their difference is resampled case by case (one index
draw for both): the interval reflects how much the *difference* varies, which is much narrower than two
overlapping per-method intervals when the methods succeed and fail on the same cases. A claim is
``supported`` when the whole 95 % interval of (better − worse) lies on the claimed side of 0 (below 0
for ECE, where lower is better), ``contradicted`` when it lies wholly on the other side, and ``not
separable from noise`` otherwise. Pooled rows (e.g. liver + breast) resample the union of the cases.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from ..config import PAPER
from . import metrics as M
from .generate import load_cached
from .scores import GREEDY, calibration_metric, greedy_metrics, resampled


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


def matched_cases(better: Sequence[dict], worse: Sequence[dict]) -> tuple[list, list]:
    """The two record lists in the same case order (matched by ``id``); ValueError naming an unmatched case."""
    by_id = {r["id"]: r for r in worse}
    ids = [r["id"] for r in better]
    missing = sorted(set(ids) ^ set(by_id))
    if missing or len(ids) != len(by_id):
        first = f"case {missing[0]!r} is in only one list" if missing else "an id appears twice"
        raise ValueError(f"paired comparison needs the same cases for both methods ({first}); "
                         f"unmatched case ids: {missing[:5]}")
    return list(better), [by_id[i] for i in ids]


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
    b, w = matched_cases(better, worse)
    on_b, on_w = resampled(metric_fn, b), resampled(metric_fn, w)

    def fn(idx):
        mb, mw = on_b(idx), on_w(idx)
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


def _claim_scopes(claims: Sequence[Claim], datasets: Sequence[str], pooled: dict):
    """(claim, scope name, its datasets) for every claim on every dataset and complete pool, leaving out the
    zero-shot thyroid for claims judged in-domain only."""
    scopes = [(d, (d,)) for d in datasets] + [(name, parts) for name, parts in pooled.items()
                                              if all(p in datasets for p in parts)]
    for claim in claims:
        for name, parts in scopes:
            if not (claim.in_domain_only and "test_thyroid" in parts):
                yield claim, name, parts


def _claim_records(results: dict, claim: Claim, parts: Sequence[str], seed: int):
    """(better, worse) records of `claim` on the union of the datasets `parts`; None if either was not evaluated."""
    got = [[results.get((m, d, claim.mode, seed)) for d in parts] for m in (claim.better, claim.worse)]
    if any(r is None for side in got for r in side):
        return None
    return tuple([r for part in side for r in part] for side in got)


def _metric_fns(delta: float) -> dict:
    return {"greedy": GREEDY, "sample": calibration_metric(delta)}


def _empty_row(claim: Claim, name: str, parts: Sequence[str]) -> dict:
    return dict(claim=claim.text, dataset=name, metric=claim.metric, better=claim.better, worse=claim.worse,
                cross_domain="test_thyroid" in parts, n=0, delta=float("nan"), low=float("nan"),
                high=float("nan"), verdict="not measured")


def paper_claims(results: dict, datasets: Sequence[str], seed: int = 0, n_boot: int = 1000,
                 delta: float = PAPER.delta, claims: Sequence[Claim] = CLAIMS, pooled: dict = POOLED) -> list[dict]:
    """One row per (claim, dataset or pool): the paired difference (better − worse) with its interval and
    verdict. `results` maps (method, dataset, mode, seed) to records (:func:`zoomdx_lib.eval.generate.
    evaluate_methods`); a claim whose methods were not evaluated is listed as 'not measured'."""
    metric_fns = _metric_fns(delta)
    rows = []
    for claim, name, parts in _claim_scopes(claims, datasets, pooled):
        row = _empty_row(claim, name, parts)
        recs = _claim_records(results, claim, parts, seed)
        if recs is not None:
            point, low, high = paired_difference(recs[0], recs[1], metric_fns[claim.mode], [claim.metric],
                                                 n_boot, seed)[claim.metric]
            row.update(n=len(recs[0]), delta=point, low=low, high=high,
                       verdict=verdict(low, high, claim.higher_is_better))
        rows.append(row)
    return rows


def mean_paired_difference(pairs: Sequence[tuple[Sequence[dict], Sequence[dict]]], metric_fn: Callable[[list], dict],
                           key: str, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> dict:
    """The paired difference (better − worse) averaged over independent replicates, each weighted equally.

    `pairs` holds one (better, worse) pair of record lists per replicate (e.g. per chain seed: its own test
    cases, its own trained models); records are matched by ``id`` within a replicate only. Returns
    ``{"delta", "low", "high", "per_run"}``: the mean of the replicates' differences, its 95 % percentile
    interval from a bootstrap that resamples cases *within* each replicate (stratified; one draw per
    replicate shared by both methods), and each replicate's own difference. The interval measures test-case
    noise given these trained models; how much training itself varies shows in `per_run`, not in the
    interval. With a single replicate it is :func:`paired_difference` (same draws).

    >>> rec = lambda i, ok: {"id": i, "c": 1, "label": "A", "rollouts": [{"answer": "A" if ok else "B",
    ...        "iou": 0.5, "tool_error": None, "fmt": 1.0}]}
    >>> one = ([rec(i, True) for i in range(4)], [rec(i, i < 2) for i in range(4)])    # +0.5
    >>> two = ([rec(i, True) for i in range(4)], [rec(i, True) for i in range(4)])     # 0
    >>> out = mean_paired_difference([one, two], greedy_metrics, "acc", n_boot=100)
    >>> out["delta"], out["per_run"]
    (0.25, [0.5, 0.0])
    """
    matched = [matched_cases(b, w) for b, w in pairs]
    sizes = [len(b) for b, _ in matched]
    on = [(resampled(metric_fn, b), resampled(metric_fn, w)) for b, w in matched]   # per-case tables built once

    def diff(on_b, on_w, idx=None):
        return float(on_b(idx)[key]) - float(on_w(idx)[key])

    per_run = [diff(*pair) for pair in on]
    rng = np.random.default_rng(seed)
    reps = np.array([np.mean([diff(*pair, rng.integers(0, n, size=n)) for pair, n in zip(on, sizes)])
                     for _ in range(n_boot)]) if matched and all(sizes) else np.array([])
    reps = reps[np.isfinite(reps)]
    low, high = np.quantile(reps, [alpha / 2, 1 - alpha / 2]) if reps.size else (float("nan"), float("nan"))
    return dict(delta=float(np.mean(per_run)) if per_run else float("nan"), low=float(low), high=float(high),
                per_run=per_run)


def claims_over_runs(runs: dict, datasets: Sequence[str], n_boot: int = 1000, seed: int = 0,
                     delta: float = PAPER.delta, claims: Sequence[Claim] = CLAIMS, pooled: dict = POOLED) -> list[dict]:
    """The paper's claims judged over several independent runs of the chain (e.g. chain seeds 0, 1, 2).

    `runs` maps a run's name to ``(results, eval_seed)`` as :func:`paper_claims` takes them. One row per
    (claim, dataset or pool) with :func:`mean_paired_difference` over the runs that evaluated both methods:
    ``runs`` (how many), ``n`` (cases in all), ``delta``/``low``/``high``/``verdict`` as in
    :func:`paper_claims`, ``per_run`` (each run's own difference) and ``agree`` (how many runs' own
    differences lie on the claimed side of 0).
    """
    metric_fns = _metric_fns(delta)
    rows = []
    for claim, name, parts in _claim_scopes(claims, datasets, pooled):
        row = _empty_row(claim, name, parts)
        got = [recs for results, eval_seed in runs.values()
               if (recs := _claim_records(results, claim, parts, eval_seed)) is not None]
        row.update(runs=len(got), per_run="", agree=0)
        if got:
            out = mean_paired_difference(got, metric_fns[claim.mode], claim.metric, n_boot, seed)
            sign = 1 if claim.higher_is_better else -1
            row.update(n=sum(len(b) for b, _ in got), delta=out["delta"], low=out["low"],
                       high=out["high"], verdict=verdict(out["low"], out["high"], claim.higher_is_better),
                       per_run=", ".join(f"{d:+.3f}" for d in out["per_run"]),
                       agree=int(sum(sign * d > 0 for d in out["per_run"])))
        rows.append(row)
    return rows


DATASET_ORDER = ("test_liver", "test_breast", "test_thyroid", "test_busbra")


def load_run(run_dir) -> tuple[dict, int]:
    """(results, eval seed) of a finished chain folder, read from its cached generations."""
    results = load_cached(Path(run_dir) / "generations")
    seeds = sorted({k[3] for k in results})
    if len(seeds) != 1:
        raise ValueError(f"{run_dir}: expected generations of one evaluation seed, found {seeds or 'none'} "
                         f"(is this a finished chain folder?)")
    return results, seeds[0]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m zoomdx_lib.eval.claims",
                                 description="The paper's claims pooled over several chain runs (e.g. chain seeds): "
                                             "mean paired difference, case-resampled interval, each run's own value.")
    ap.add_argument("runs", nargs="+", help="finished chain folders (python -m zoomdx_lib.workbook.runner --out DIR)")
    ap.add_argument("--out", default=None, help="write the table here (.md and .csv beside it)")
    ap.add_argument("--n-boot", type=int, default=1000)
    args = ap.parse_args(argv)
    runs = {str(r): load_run(r) for r in args.runs}
    present = set.intersection(*({k[1] for k in res} for res, _ in runs.values()))
    datasets = [d for d in DATASET_ORDER if d in present] + sorted(present - set(DATASET_ORDER))
    rows = claims_over_runs(runs, datasets, n_boot=args.n_boot)
    table = pd.DataFrame([r for r in rows if r["verdict"] != "not measured"]).set_index(["claim", "dataset"])
    cols = ["metric", "runs", "n", "delta", "low", "high", "per_run", "agree", "verdict"]
    text = (f"The paper's claims over {len(runs)} runs ({', '.join(runs)}): mean of the runs' paired differences "
            f"(better − worse), 95 % interval resampling cases within each run\n\n"
            + table[cols].round(3).to_markdown() + "\n")
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".md").write_text(text)
        table.to_csv(out.with_suffix(".csv"))


if __name__ == "__main__":
    main()
