"""Scores from generation records: Acc / mIoU (greedy), SAcc / Align / ECE / Gap (8 rollouts), intervals.

Every number of the tables is computed here from the cached records of
:mod:`zoomdx_lib.eval.generate` (tests recompute them the same way); intervals are the percentile
bootstrap over cases of :func:`zoomdx_lib.eval.metrics.bootstrap`.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable, Sequence

import numpy as np

from ..config import PAPER
from ..data.store import load_dialogues
from ..protocol import think_text
from . import metrics as M
from .text_metrics import bleu1, rouge_l


@dataclass(frozen=True)
class CaseMetric:
    """A metric in two steps: per-case arrays from the records (`table`), then the metric dict from those
    arrays (`aggregate`). Calling it on records gives the metric; a bootstrap builds the table once and
    resamples its rows (:func:`resampled`), which gives the same numbers as calling it on resampled
    records without processing every case again on every draw."""

    table: Callable[[Sequence[dict]], dict]
    aggregate: Callable[[dict], dict]

    def __call__(self, records: Sequence[dict]) -> dict:
        return self.aggregate(self.table(records))


def resampled(metric_fn: Callable[[Sequence[dict]], dict], records: Sequence[dict]) -> Callable:
    """``f(idx)`` = ``metric_fn([records[i] for i in idx])`` (every record for ``idx=None``); a
    :class:`CaseMetric` builds its table once and takes the rows `idx`.

    >>> rec = lambda ok: {"c": 1, "label": "A", "rollouts": [{"answer": "A" if ok else "B", "iou": 0.5,
    ...        "tool_error": None, "fmt": 1.0}]}
    >>> f = resampled(GREEDY, [rec(True), rec(False)])
    >>> f()["acc"], f(np.array([0, 0]))["acc"], f(np.array([0, 0]))["acc"] == greedy_metrics([rec(True)] * 2)["acc"]
    (0.5, 1.0, True)
    """
    if isinstance(metric_fn, CaseMetric):
        table = metric_fn.table(records)
        return lambda idx=None: metric_fn.aggregate(table if idx is None else {k: v[idx] for k, v in table.items()})
    return lambda idx=None: metric_fn(records if idx is None else [records[i] for i in idx])


def greedy_table(records: Sequence[dict]) -> dict:
    """Per-case arrays of the first rollout: correct (answer == label), c1, iou, single_turn, tool_ok,
    answer_ok, fmt."""
    first = [r["rollouts"][0] for r in records]
    return dict(correct=np.array([f["answer"] is not None and f["answer"] == r["label"] for f, r in zip(first, records)], bool),
                c1=np.array([r["c"] == 1 for r in records], bool), iou=np.array([f["iou"] for f in first], float),
                single_turn=np.array([f["tool_error"] == "single_turn" for f in first], bool),
                tool_ok=np.array([f["tool_error"] is None for f in first], bool),
                answer_ok=np.array([f["answer"] is not None for f in first], bool), fmt=np.array([f["fmt"] for f in first], float))


def greedy_from_table(t: dict) -> dict:
    c1, ious, n = t["c1"], t["iou"], len(t["c1"])
    if n and t["single_turn"].all():
        ious = np.full(n, np.nan)  # no box: mIoU is not defined for the no-zoom baseline
    mean = lambda a: float(np.mean(a)) if len(a) else float("nan")  # noqa: E731
    return dict(n=n, n_c1=int(c1.sum()), acc=mean(t["correct"][c1]),
                miou_c1=mean(ious[c1]), miou_all=mean(ious),  # nan stays nan
                tool_call_valid=mean(t["tool_ok"]), answer_valid=mean(t["answer_ok"]), format_ok=mean(t["fmt"]))


GREEDY = CaseMetric(greedy_table, greedy_from_table)


def greedy_metrics(records: Sequence[dict]) -> dict:
    """Acc on c=1, mIoU on c=1 and on all, tool-call and answer validity (all 0-1), from greedy records."""
    return GREEDY(records)


def calibration_arrays(records: Sequence[dict]) -> dict:
    """Per-case arrays from sampled records: answers (G per case), modes, kappas, correct, c."""
    answers = [[ro["answer"] for ro in r["rollouts"]] for r in records]
    modes, kappas = M.consensus(answers)
    labels = [r["label"] for r in records]
    correct = np.array([m is not None and m == y for m, y in zip(modes, labels)], dtype=float)
    return dict(answers=answers, modes=modes, kappas=np.asarray(kappas, float), labels=labels, correct=correct,
                c=np.array([r["c"] for r in records]))


def calibration_table(records: Sequence[dict]) -> dict:
    """Per-case arrays of :func:`calibration_metrics`: kappa, correct (consensus == label), c, entropy (bits)."""
    a = calibration_arrays(records)
    return dict(kappa=a["kappas"], correct=a["correct"], c=a["c"],
                entropy=np.array([M.answer_entropy(x, 2) for x in a["answers"]], np.float64))


def calibration_from_table(t: dict, delta: float = PAPER.delta) -> dict:
    kappas, correct, c = t["kappa"], t["correct"], t["c"]
    selected = kappas >= delta   # is_confident, for every case at once
    return dict(n=len(c), sacc=float(correct[selected].mean()) if selected.any() else float("nan"),
                n_selected=int(selected.sum()), align=M.alignment(kappas, c, delta),
                ece10=M.ece(kappas, correct, 10), ece15=M.ece(kappas, correct, 15), gap=M.gap_of_entropies(t["entropy"], c),
                mean_kappa_c1=float(kappas[c == 1].mean()) if (c == 1).any() else float("nan"),
                mean_kappa_c0=float(kappas[c == 0].mean()) if (c == 0).any() else float("nan"))


def calibration_metric(delta: float = PAPER.delta) -> CaseMetric:
    """:func:`calibration_metrics` at `delta` as a :class:`CaseMetric`."""
    return CaseMetric(calibration_table, partial(calibration_from_table, delta=delta))


def calibration_metrics(records: Sequence[dict], delta: float = PAPER.delta) -> dict:
    """SAcc (and how many cases have kappa >= delta), Align, ECE (10 and 15 bins) and the Entropy Gap (bits).

    ECE is computed on all cases (c=0 and c=1): kappa is the model's confidence in its consensus
    answer and the label y exists for both, so calibration is defined on every case.
    """
    return calibration_from_table(calibration_table(records), delta)


def _bootstrap_records(metrics_fn, records, keys, n_boot: int, seed: int) -> dict:
    """95 % bootstrap over cases of the `keys` of a dict-valued ``metrics_fn(records)``."""
    on = resampled(metrics_fn, records)

    def fn(idx):
        m = on(idx)
        return {k: m[k] for k in keys}
    return M.bootstrap(fn, len(records), n_boot, seed=seed)


def bootstrap_greedy(records, n_boot: int = 1000, seed: int = 0) -> dict:
    """95 % bootstrap intervals (resampling cases) for Acc and mIoU: {name: (point, low, high)}."""
    return _bootstrap_records(GREEDY, records, ("acc", "miou_c1", "miou_all"), n_boot, seed)


def bootstrap_calibration(records, delta: float = PAPER.delta, n_boot: int = 1000, seed: int = 0) -> dict:
    """95 % bootstrap intervals for SAcc, Align, ECE-10 and Gap: {name: (point, low, high)}."""
    return _bootstrap_records(calibration_metric(delta), records, ("sacc", "align", "ece10", "gap"),
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
