"""Figures of the RL study and the positive controls: training curves and crop use (the claims are drawn by
:func:`zoomdx_lib.workbook.viz_calibration.claims_forest`)."""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .viz import rolling_mean

CURVE_KEYS = ("reward_total", "entropy", "clip_frac", "kl", "tool_call_valid", "answer_valid", "box_area",
              "no_signal_share")


def curve_points(log: Sequence[dict]) -> list[dict]:
    """The plotted part of a GRPO log: each row's step and :data:`CURVE_KEYS` (None where not logged)."""
    return [{k: row.get(k) for k in ("step", *CURVE_KEYS)} for row in log]


def rl_curves(logs: dict, keys: Sequence[str] = CURVE_KEYS, window: int = 5, save_path=None):
    """One panel per logged quantity (trailing mean over `window` steps), one line per run.

    logs: {run name: GRPO log rows}. Keys a run did not log are skipped for that run. Returns the figure.
    """
    cols = 4
    rows = int(np.ceil(len(keys) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.6 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        for name, log in logs.items():
            vals = [np.nan if r.get(key) is None else r[key] for r in log]
            if np.isfinite(vals).any():
                ax.plot(np.arange(1, len(vals) + 1), rolling_mean(vals, window), label=name, lw=1.3)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    if save_path:
        fig.savefig(save_path, dpi=120)
    return fig


def crop_use_bars(crop: pd.DataFrame, save_path=None):
    """Accuracy on c = 1 cases per method and crop source (own, true, blank, elsewhere), averaged over
    seeds, with the share of answers that changed from the own crop written above each bar."""
    table = crop.groupby(["method", "source"], sort=False)[["acc_c1", "changed"]].mean().reset_index()
    methods = list(dict.fromkeys(table["method"]))
    sources = list(dict.fromkeys(table["source"]))
    width = 0.8 / len(sources)
    fig, ax = plt.subplots(figsize=(1.8 + 1.9 * len(methods), 3.4))
    for k, source in enumerate(sources):
        part = table[table["source"] == source].set_index("method").reindex(methods)
        xs = np.arange(len(methods)) + (k - (len(sources) - 1) / 2) * width
        ax.bar(xs, part["acc_c1"], width, label=source)
        for x, acc, ch in zip(xs, part["acc_c1"], part["changed"]):
            if np.isfinite(acc) and source != "own":
                ax.text(x, acc + 0.01, f"{ch:.0%}", ha="center", fontsize=6, rotation=90)
    ax.set_xticks(np.arange(len(methods)))
    ax.set_xticklabels(methods, fontsize=7, rotation=10)
    ax.set_ylabel("Acc (c = 1), turn 2 from …")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7, ncol=len(sources))
    fig.tight_layout()
    if save_path:
        fig.savefig(save_path, dpi=120)
    return fig
