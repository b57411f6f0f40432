"""Scores from generation records: Acc / mIoU (greedy), SAcc / Align / ECE / Gap (8 rollouts), intervals.

Every number of the tables is computed here from the cached records of
:mod:`zoomdx_lib.eval.generate` (tests recompute them the same way); intervals are the percentile
bootstrap over cases of :func:`zoomdx_lib.eval.metrics.bootstrap`.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..config import PAPER
from ..data.store import load_dialogues
from ..protocol import think_text
from . import metrics as M
from .text_metrics import bleu1, rouge_l


def greedy_metrics(records: Sequence[dict]) -> dict:
    """Acc on c=1, mIoU on c=1 and on all, tool-call and answer validity (all 0-1), from greedy records."""
    first = [r["rollouts"][0] for r in records]
    preds = [f["answer"] for f in first]
    labels = [r["label"] for r in records]
    c1 = np.array([r["c"] == 1 for r in records])
    ious = np.array([f["iou"] for f in first])
    if first and all(f["tool_error"] == "single_turn" for f in first):
        ious = np.full(len(first), np.nan)  # no box: mIoU is not defined for the no-zoom baseline
    return dict(n=len(records), n_c1=int(c1.sum()), acc=M.accuracy(preds, labels, mask=c1),
                miou_c1=float(ious[c1].mean()) if c1.any() else float("nan"),  # nan stays nan
                miou_all=float(ious.mean()) if len(ious) else float("nan"),
                tool_call_valid=float(np.mean([f["tool_error"] is None for f in first])),
                answer_valid=float(np.mean([f["answer"] is not None for f in first])),
                format_ok=float(np.mean([f["fmt"] for f in first])))


def calibration_arrays(records: Sequence[dict]) -> dict:
    """Per-case arrays from sampled records: answers (G per case), modes, kappas, correct, c."""
    answers = [[ro["answer"] for ro in r["rollouts"]] for r in records]
    modes, kappas = M.consensus(answers)
    labels = [r["label"] for r in records]
    correct = np.array([m is not None and m == y for m, y in zip(modes, labels)], dtype=float)
    return dict(answers=answers, modes=modes, kappas=np.asarray(kappas, float), labels=labels, correct=correct,
                c=np.array([r["c"] for r in records]))


def calibration_metrics(records: Sequence[dict], delta: float = PAPER.delta) -> dict:
    """SAcc (and how many cases have kappa >= delta), Align, ECE (10 and 15 bins) and the Entropy Gap (bits).

    ECE is computed on all cases (c=0 and c=1): kappa is the model's confidence in its consensus
    answer and the label y exists for both, so calibration is defined on every case.
    """
    a = calibration_arrays(records)
    sacc, n_sel = M.selective_accuracy(a["modes"], a["kappas"], a["labels"], delta)
    return dict(n=len(records), sacc=sacc, n_selected=int(n_sel), align=M.alignment(a["kappas"], a["c"], delta),
                ece10=M.ece(a["kappas"], a["correct"], 10), ece15=M.ece(a["kappas"], a["correct"], 15),
                gap=M.entropy_gap(a["answers"], a["c"], base=2),
                mean_kappa_c1=float(a["kappas"][a["c"] == 1].mean()) if (a["c"] == 1).any() else float("nan"),
                mean_kappa_c0=float(a["kappas"][a["c"] == 0].mean()) if (a["c"] == 0).any() else float("nan"))


def _bootstrap_records(metrics_fn, records, keys, n_boot: int, seed: int) -> dict:
    """95 % bootstrap over cases of the `keys` of a dict-valued ``metrics_fn(records)``."""
    def fn(idx):
        m = metrics_fn(records if idx is None else [records[i] for i in idx])
        return {k: m[k] for k in keys}
    return M.bootstrap(fn, len(records), n_boot, seed=seed)


def bootstrap_greedy(records, n_boot: int = 1000, seed: int = 0) -> dict:
    """95 % bootstrap intervals (resampling cases) for Acc and mIoU: {name: (point, low, high)}."""
    return _bootstrap_records(greedy_metrics, records, ("acc", "miou_c1", "miou_all"), n_boot, seed)


def bootstrap_calibration(records, delta: float = PAPER.delta, n_boot: int = 1000, seed: int = 0) -> dict:
    """95 % bootstrap intervals for SAcc, Align, ECE-10 and Gap: {name: (point, low, high)}."""
    return _bootstrap_records(lambda recs: calibration_metrics(recs, delta), records, ("sacc", "align", "ece10", "gap"),
                           n_boot, seed)


def greedy_table(results: dict, methods: Sequence[str], datasets: Sequence[str], seed: int = 0,
                 n_boot: int = 1000) -> list[dict]:
    """Rows {method, dataset, acc, acc_low, acc_high, miou_c1, ..., tool_call_valid, answer_valid} (0-1)."""
    rows = []
    for m in methods:
        for d in datasets:
            recs = results.get((m, d, "greedy", seed))
            if recs is None:
                continue
            row = dict(method=m, dataset=d, **greedy_metrics(recs))
            for k, (p, lo, hi) in bootstrap_greedy(recs, n_boot, seed).items():
                row[f"{k}_low"], row[f"{k}_high"] = lo, hi
            rows.append(row)
    return rows


def pick_ambiguous_case(records: Sequence[dict]) -> dict:
    """The c=0 case whose rollouts give the most distinct answers (the first record if no c=0 case)."""
    amb = [r for r in records if r["c"] == 0]
    return max(amb, key=lambda r: len({ro["answer"] for ro in r["rollouts"]})) if amb else records[0]


def rationale_scores(results: dict, methods: Sequence[str], datasets: Sequence[str], data_dir, seed: int = 0) -> list:
    """BLEU-1 and ROUGE-L (0-1) of each method's greedy diagnostic rationale (the turn-2 `<think>`, or the
    single turn) against the reference rationale of the dataset's dialogue, averaged over cases."""
    rows = []
    for d in datasets:
        try:
            refs = {r["id"]: think_text(r["messages"][-1]["content"][0]["text"])
                    for r in load_dialogues(data_dir, d)}
        except FileNotFoundError:
            continue
        for m in methods:
            recs = results.get((m, d, "greedy", seed))
            if not recs:
                continue
            pairs = [(think_text(r["rollouts"][0]["turn2"] or r["rollouts"][0]["turn1"]), refs.get(r["id"], ""))
                     for r in recs]
            rows.append(dict(method=m, dataset=d, bleu1=float(np.mean([bleu1(c, ref) for c, ref in pairs])),
                             rouge_l=float(np.mean([rouge_l(c, ref) for c, ref in pairs])), n=len(pairs)))
    return rows
