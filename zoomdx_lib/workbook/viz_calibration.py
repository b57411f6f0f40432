"""Calibration figures (matplotlib only): kappa distributions (Fig. 1), reliability diagrams, risk-coverage,
and the paper's claims as paired differences with their intervals.

Same conventions as :mod:`zoomdx_lib.workbook.viz`: each function returns a stand-alone Figure and writes a
PNG when `save_path` is given; arrays "by method" are :func:`zoomdx_lib.eval.scores.calibration_arrays` outputs.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

from ..config import PAPER
from ..eval.metrics import ece, reliability_bins, risk_coverage
from .viz import _figure, _finish


def _group_size(arrays: dict) -> int:
    sizes = [len(a) for a in arrays.get("answers", [])]
    return max(sizes) if sizes else 8


def kappa_distributions(arrays_by_method: dict, save_path=None) -> Figure:
    """Fig. 1 style: per method, the distribution of kappa (k/G) on c=1 vs c=0 cases (fraction of each group)."""
    fig, axes = _figure(1, len(arrays_by_method), (3.6 * len(arrays_by_method), 3.2))
    for ax, (method, a) in zip(axes.flat, arrays_by_method.items()):
        G = _group_size(a)
        grid = np.arange(G + 1) / G
        k, c = np.asarray(a["kappas"], float), np.asarray(a["c"], int)
        for off, cv, color in ((-0.25, 1, "C2"), (0.25, 0, "C3")):
            sel = k[c == cv]
            frac = np.array([np.isclose(sel, g).sum() for g in grid], float) / max(1, sel.size)
            mean = f"{sel.mean():.2f}" if sel.size else "n/a"
            ax.bar(grid + off / G, frac, width=0.45 / G, color=color, label=f"c={cv} (n={sel.size}, mean {mean})")
        ax.set_xticks(grid, [f"{i}/{G}" for i in range(G + 1)], fontsize=7)
        ax.set_xlabel("kappa (agreement of G rollouts)")
        ax.set_ylabel("fraction of cases")
        ax.set_title(method, fontsize=9)
        ax.legend(fontsize=7)
    return _finish(fig, save_path)


def reliability_diagram(arrays_by_method: dict, n_bins: int = 10, save_path=None) -> Figure:
    """Accuracy of the consensus vs kappa per equal-width bin, diagonal, bin counts over the bars, ECE in the title."""
    fig, axes = _figure(1, len(arrays_by_method), (3.6 * len(arrays_by_method), 3.6))
    for ax, (method, a) in zip(axes.flat, arrays_by_method.items()):
        bins = reliability_bins(a["kappas"], a["correct"], n_bins)
        ax.plot([0, 1], [0, 1], "k--", lw=0.8)
        for b in bins:
            if not b.count:
                continue
            mid = (b.lower + b.upper) / 2
            first = b is next(x for x in bins if x.count)
            ax.bar(mid, b.accuracy, width=b.upper - b.lower, edgecolor="k", color="C0", alpha=0.75,
                   label="accuracy" if first else None)
            ax.bar(mid, b.mean_confidence - b.accuracy, bottom=b.accuracy, width=b.upper - b.lower,
                   color="C3", alpha=0.25, hatch="//", label="gap to mean kappa" if first else None)
            ax.text(mid, min(1.0, max(b.accuracy, b.mean_confidence)) + 0.02, str(b.count), ha="center", fontsize=6)
        e = ece(a["kappas"], a["correct"], n_bins) if len(a["kappas"]) else float("nan")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.1)
        ax.set_xlabel("confidence kappa")
        ax.set_ylabel("accuracy of consensus")
        ax.set_title(f"{method}  ECE-{n_bins} {100 * e:.1f}  (n per bin above bars)", fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
    return _finish(fig, save_path)


def risk_coverage_plot(arrays_by_method: dict, delta: float = PAPER.delta, save_path=None) -> Figure:
    """Selective accuracy vs coverage as the kappa threshold moves (hollow marker: threshold `delta`)."""
    fig, axes = _figure(1, 1, (5.0, 3.8))
    ax = axes[0, 0]
    for n, (method, a) in enumerate(arrays_by_method.items()):
        t, cov, acc = risk_coverage(a["kappas"], a["correct"])
        ax.plot(cov, acc, "o-", color=f"C{n}", ms=3, label=method)
        at = np.flatnonzero(t >= delta - 1e-9)
        if at.size:
            ax.plot(cov[at[-1]], acc[at[-1]], "o", ms=9, mfc="none", color=f"C{n}")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("coverage (share of cases with kappa >= t)")
    ax.set_ylabel("selective accuracy")
    ax.set_title(f"Risk-coverage (circle: t = {delta})", fontsize=9)
    ax.legend(fontsize=7)
    return _finish(fig, save_path)


def claims_forest(rows: Sequence[dict], save_path=None) -> Figure:
    """The paper's claims as paired differences (better − worse) with 95 % intervals, one panel per metric,
    green when supported, red when contradicted, grey otherwise (rows from
    :func:`zoomdx_lib.eval.claims.paper_claims`; unmeasured rows are left out)."""
    rows = [r for r in rows if r["verdict"] != "not measured"]
    metrics = list(dict.fromkeys(r["metric"] for r in rows)) or ["acc"]
    colour = {"supported": "tab:green", "contradicted": "tab:red"}
    fig, axes = _figure(1, len(metrics), (4.2 * len(metrics), 0.32 * max(4, max(
        (sum(r["metric"] == m for r in rows) for m in metrics), default=4)) + 1.2))
    for ax, metric in zip(axes[0], metrics):
        sub = [r for r in rows if r["metric"] == metric]
        y = np.arange(len(sub))[::-1]
        for yi, r in zip(y, sub):
            c = colour.get(r["verdict"], "0.45")
            ax.plot([r["low"], r["high"]], [yi, yi], color=c, lw=2)
            ax.plot([r["delta"]], [yi], "o", color=c)
        ax.axvline(0, color="k", lw=0.8)
        ax.set_yticks(y, [f"{r['better']} − {r['worse']}\n{r['dataset']}".replace("grpo_", "") for r in sub],
                      fontsize=6)
        ax.set_title(f"{metric}: better − worse" + (" (lower is better)" if metric.startswith("ece") else ""),
                     fontsize=9)
    return _finish(fig, save_path)
