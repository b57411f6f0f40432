"""The paper's tables from cached generations: Table 1 (Acc, mIoU), Table 2 (SAcc, Align, ECE, Gap),
the ablation, and the paper's published numbers beside ours. Cells read "value [low, high]"
(95 % bootstrap over cases); percentages for Acc/mIoU/SAcc/Align, fractions for ECE and Gap,
as in the paper. Written as CSV, Markdown and LaTeX.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import pandas as pd

from ..config import PAPER
from .scores import bootstrap_calibration, bootstrap_greedy

# The paper's published Table 1 / Table 2 numbers (Qwen2.5-VL-7B on the authors' data).
PAPER_TABLES = Path(__file__).with_name("paper_tables.json")

CAPTIONS = {"table1": "Table 1: Acc (c=1, greedy) and mIoU, % [95% CI]",
            "table2": "Table 2: SAcc, Align (%), ECE, Entropy Gap (bits) from 8 rollouts [95% CI]",
            "ablation": "Ablation (paper Sec. 3.3): SFT vs accuracy-only RL vs uncertainty RL"}
PERCENT = {"acc", "miou_c1", "miou_all", "sacc", "align"}


def fmt_cell(point: float, low: float, high: float, key: str) -> str:
    """'69.3 [61.0, 77.1]' for percentages, '0.13 [0.08, 0.19]' for ECE/Gap, '–' for nan."""
    if point is None or (isinstance(point, float) and math.isnan(point)):
        return "–"
    if key in PERCENT:
        return f"{100 * point:.1f} [{100 * low:.1f}, {100 * high:.1f}]" if not math.isnan(low) else f"{100 * point:.1f}"
    return f"{point:.2f} [{low:.2f}, {high:.2f}]" if not math.isnan(low) else f"{point:.2f}"


def _cells(results, method, dataset, seed, n_boot, delta):
    out = {}
    g = results.get((method, dataset, "greedy", seed))
    if g is not None:
        for k, v in bootstrap_greedy(g, n_boot, seed).items():
            out[k] = v
    s = results.get((method, dataset, "sample", seed))
    if s is not None:
        for k, v in bootstrap_calibration(s, delta, n_boot, seed).items():
            out[k] = v
    return out


def build_tables(results: dict, methods: Sequence[str], datasets: Sequence[str], seed: int = 0,
                 n_boot: int = 1000, delta: float = PAPER.delta, ablation_dataset: str = "test_liver",
                 ablation_methods: Sequence[str] = ()) -> dict:
    """Return {"table1", "table2", "ablation", "long"} DataFrames. `long` has one row per
    (method, dataset, metric) with point, low, high: the numbers every other table is made from."""
    long = []
    for m in methods:
        for d in datasets:
            for k, (p, lo, hi) in _cells(results, m, d, seed, n_boot, delta).items():
                long.append(dict(method=m, dataset=d, metric=k, point=p, low=lo, high=hi))
    long = pd.DataFrame(long, columns=["method", "dataset", "metric", "point", "low", "high"])

    def wide(metrics, names, rows=methods, cols=datasets):
        table = pd.DataFrame(index=list(rows))
        for d in cols:
            for k, label in zip(metrics, names):
                vals = []
                for m in rows:
                    hit = long[(long.method == m) & (long.dataset == d) & (long.metric == k)]
                    vals.append(fmt_cell(*hit[["point", "low", "high"]].iloc[0], k) if len(hit) else "–")
                table[f"{d.removeprefix('test_')} {label}"] = vals
        return table

    t1 = wide(["acc", "miou_c1"], ["Acc", "mIoU"])
    t2 = wide(["sacc", "align", "ece10", "gap"], ["SAcc", "Align", "ECE", "Gap"])
    abl = wide(["acc", "miou_c1", "sacc", "align", "ece10", "gap"], ["Acc", "mIoU", "SAcc", "Align", "ECE", "Gap"],
               rows=list(ablation_methods) or list(methods), cols=[ablation_dataset])
    return dict(table1=t1, table2=t2, ablation=abl, long=long)


def paper_side_by_side(ours: pd.DataFrame, ours_name: str, paper_json=PAPER_TABLES) -> pd.DataFrame:
    """The paper's 'Ours' rows next to one of our methods (point values), labelled as measured on
    different data and models."""
    paper = json.loads(Path(paper_json).read_text())
    rows = []
    for organ in ("liver", "breast", "thyroid"):
        p1 = paper["table1_acc_miou"]["Ours"][organ]
        p2 = paper["table2_uncertainty"]["Ours"][organ]
        sub = ours[(ours.method == ours_name) & (ours.dataset == f"test_{organ}")]
        get = lambda k: float(sub[sub.metric == k].point.iloc[0]) if (sub.metric == k).any() else float("nan")  # noqa: E731
        for metric, pv, ov, scale in [("Acc", p1[0], get("acc"), 100), ("mIoU", p1[1], get("miou_c1"), 100),
                                      ("SAcc", p2[0], get("sacc"), 100), ("Align", p2[1], get("align"), 100),
                                      ("ECE", p2[2], get("ece10"), 1), ("Gap", p2[3], get("gap"), 1)]:
            rows.append({"dataset": organ, "metric": metric,
                         "paper (Qwen2.5-VL-7B, real data)": pv,
                         f"this run ({ours_name}, tiny model, synthetic data)": round(ov * scale, 3)})
    return pd.DataFrame(rows)


def write_table(df: pd.DataFrame, out_dir, name: str, caption: str = "") -> dict:
    """Write `name`.csv, .md and .tex into out_dir; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {ext: out_dir / f"{name}.{ext}" for ext in ("csv", "md", "tex")}
    df.to_csv(paths["csv"])
    paths["md"].write_text((f"{caption}\n\n" if caption else "") + df.to_markdown() + "\n")
    latex = df.to_latex(escape=True)
    if caption:
        latex = f"% {caption}\n" + latex
    paths["tex"].write_text(latex)
    return {k: str(v) for k, v in paths.items()}
