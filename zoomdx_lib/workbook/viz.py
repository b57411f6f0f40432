"""Figures of the workbook (matplotlib only): data examples, training curves, Fig. 1/3-style panels.

Long because it holds the data, training and qualitative figures, one function each (calibration figures:
:mod:`zoomdx_lib.workbook.viz_calibration`; RL study: :mod:`zoomdx_lib.workbook.viz_rl`).

Every plotting function builds a stand-alone ``matplotlib.figure.Figure`` (no pyplot state, so it
works under Agg, leaks nothing and is never shown twice in a notebook), returns it, and writes a
PNG at 120 dpi when `save_path` is given. Boxes are (x1, y1, x2, y2) in original-image pixels.
Arrays "by method" are :func:`zoomdx_lib.eval.scores.calibration_arrays` outputs.
"""
from __future__ import annotations

import io
import math
import textwrap
from collections import Counter
from pathlib import Path
from typing import Optional, Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from ..geometry import crop_image
from ..protocol import think_text
from ..rl.rewards import mode_and_kappa
from ..schema import ATTRIBUTE_LABELS

DPI = 120
TRUE_COLOR, PRED_COLOR = "limegreen", "red"


def _figure(nrows: int, ncols: int, size: tuple[float, float]):
    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def _finish(fig: Figure, save_path) -> Figure:
    if save_path is not None:
        Path(save_path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(save_path, dpi=DPI)
    return fig


def png_bytes(fig: Figure, dpi: int = 100) -> bytes:
    """The figure as PNG bytes (for ``widgets.Image`` / ``IPython.display.Image``)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def rationale(text: Optional[str], width: int = 90) -> str:
    """The <think> text of a turn (whole text if no tag), whitespace-collapsed, cut to `width` chars."""
    if not text:
        return ""
    s = " ".join((think_text(text, unclosed=True) if "<think>" in text else text).split())
    return s if len(s) <= width else s[:width - 3] + "..."


def draw_boxes(ax, image, boxes: Sequence[tuple]) -> None:
    """Show `image` on `ax` (grayscale for 'L') and outline each (box, color, label[, style]).

    None boxes are skipped; the optional style dict holds ``lw``, ``ls`` and ``where`` ("top" puts
    the label above the box, "bottom" below it).
    """
    gray = getattr(image, "mode", "") in ("L", "I", "F", "I;16")
    lim = dict(vmin=0, vmax=255) if getattr(image, "mode", "") == "L" else {}
    ax.imshow(np.asarray(image), cmap="gray" if gray else None, **lim)
    for box, color, label, *style in boxes:
        if box is None:
            continue
        st = style[0] if style else {}
        x1, y1, x2, y2 = (float(v) for v in box)
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color,
                               linewidth=st.get("lw", 1.5), linestyle=st.get("ls", "-")))
        if label:
            bottom = st.get("where") == "bottom"
            ax.text(x1, y2 + 1 if bottom else y1 - 1, label, color=color, fontsize=7, va="top" if bottom else "bottom",
                    bbox=dict(facecolor="black", alpha=0.5, pad=0.5, linewidth=0))
    ax.set_xticks([])
    ax.set_yticks([])


def _order(values, key: str) -> list:
    vals = set(values)
    if key == "label":
        rank = {lab: (i, j) for i, labs in enumerate(ATTRIBUTE_LABELS.values()) for j, lab in enumerate(labs)}
        return sorted(vals, key=lambda v: rank.get(v, (99, str(v))))
    return sorted(vals, key=lambda v: (v is None, str(v)) if not isinstance(v, (int, float)) else (False, -v))


def example_grid(samples_with_images, rows_key: str = "label", cols_key: str = "c", max_per_cell: int = 1,
                 save_path=None) -> Figure:
    """Grid of examples: one row per value of `rows_key`, `max_per_cell` columns per value of `cols_key`
    (c = 1 before c = 0), each image with its true box and organ/attribute/label/c/raters."""
    items = list(samples_with_images)
    rows = _order([getattr(s, rows_key) for s, _ in items], rows_key)
    cols = _order([getattr(s, cols_key) for s, _ in items], cols_key)
    fig, axes = _figure(len(rows), len(cols) * max_per_cell, (2.3 * len(cols) * max_per_cell, 2.5 * len(rows)))
    for ax in axes.flat:
        ax.axis("off")
    for i, r in enumerate(rows):
        for j, cv in enumerate(cols):
            cell = [(s, im) for s, im in items if getattr(s, rows_key) == r and getattr(s, cols_key) == cv]
            for k, (s, im) in enumerate(cell[:max_per_cell]):
                ax = axes[i, j * max_per_cell + k]
                ax.axis("on")
                draw_boxes(ax, im, [(s.box, TRUE_COLOR, None)])
                raters = "/".join(s.rater_labels) if s.rater_labels else "n/a"
                ax.set_title(f"{s.organ} | {s.attribute}\n{s.label}  c={s.c}\nraters: {raters}", fontsize=7)
    return _finish(fig, save_path)


def disagreement_plot(centres, p_c0, counts, save_path=None) -> Figure:
    """P(c=0) (raters disagree) per difficulty bin as a line, bin counts as bars on a twin axis."""
    centres, p_c0, counts = (np.asarray(a, float) for a in (centres, p_c0, counts))
    fig, axes = _figure(1, 1, (5.5, 3.6))
    ax = axes[0, 0]
    tw = ax.twinx()
    width = float(np.min(np.diff(centres))) * 0.9 if centres.size > 1 else 0.1
    tw.bar(centres, counts, width=width, color="0.8", label="cases")
    tw.set_ylabel("cases per bin")
    ax.set_zorder(tw.get_zorder() + 1)
    ax.patch.set_visible(False)
    ax.plot(centres, p_c0, "o-", color="C3", label="P(c=0)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("latent difficulty")
    ax.set_ylabel("P(raters disagree)  P(c=0)")
    ax.set_title("Rater disagreement vs difficulty")
    return _finish(fig, save_path)


def balance_plot(samples_by_split: dict, save_path=None) -> Figure:
    """Per split, stacked bars of the attribute/label counts (left) and of c=1 vs c=0 (right)."""
    splits = list(samples_by_split)
    keys = [f"{a}/{lab}" for a, labs in ATTRIBUTE_LABELS.items() for lab in labs]
    counts = {sp: Counter(f"{s.attribute}/{s.label}" for s in ss) for sp, ss in samples_by_split.items()}
    keys = [k for k in keys if any(counts[sp][k] for sp in splits)]
    extra = sorted({k for sp in splits for k in counts[sp]} - set(keys))
    fig, axes = _figure(1, 2, (max(7.0, 1.6 * len(splits) + 5), 3.8))
    x = np.arange(len(splits))
    cmap = matplotlib.colormaps["tab20"]
    bottom = np.zeros(len(splits))
    for n, k in enumerate(keys + extra):
        v = np.array([counts[sp][k] for sp in splits], float)
        axes[0, 0].bar(x, v, bottom=bottom, color=cmap(n % 20), label=k)
        bottom += v
    axes[0, 0].set_title("label balance")
    axes[0, 0].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1, 1))
    bottom = np.zeros(len(splits))
    for cv, color in ((1, "C2"), (0, "C3")):
        v = np.array([sum(s.c == cv for s in samples_by_split[sp]) for sp in splits], float)
        axes[0, 1].bar(x, v, bottom=bottom, color=color, label=f"c={cv}")
        for xi, (b, vi) in enumerate(zip(bottom, v)):
            if vi:
                axes[0, 1].text(xi, b + vi / 2, str(int(vi)), ha="center", va="center", fontsize=7)
        bottom += v
    axes[0, 1].set_title("sonographer confidence c")
    axes[0, 1].legend(fontsize=7)
    for ax in axes.flat:
        ax.set_xticks(x, splits, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("samples")
    return _finish(fig, save_path)


def loss_curve(histories: dict, save_path=None) -> Figure:
    """Training loss vs step, one line per named run (log y when all losses are positive)."""
    fig, axes = _figure(1, 1, (5.5, 3.6))
    ax = axes[0, 0]
    positive = True
    for name, rows in histories.items():
        steps = [r["step"] for r in rows]
        loss = [r["loss"] for r in rows]
        positive &= all(v > 0 for v in loss)
        ax.plot(steps, loss, label=name, lw=1.2)
    if positive and any(histories.values()):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("SFT loss")
    ax.legend(fontsize=8)
    return _finish(fig, save_path)


def prediction_panels(records, images: dict, crop_pixels: int, n: int = 6, save_path=None) -> Figure:
    """First `n` records with an image: image with true (green) and greedy predicted (red) box,
    and beside it the crop at the predicted box; titles give predicted / true label."""
    recs = [r for r in records if r["id"] in images][:n]
    per_row = max(1, min(3, len(recs)))
    nrows = max(1, math.ceil(len(recs) / per_row))
    fig, axes = _figure(nrows, 2 * per_row, (2.2 * 2 * per_row, 3.0 * nrows))
    for ax in axes.flat:
        ax.axis("off")
    for i, r in enumerate(recs):
        ro, img = r["rollouts"][0], images[r["id"]]
        a_img, a_crop = axes[i // per_row, 2 * (i % per_row)], axes[i // per_row, 2 * (i % per_row) + 1]
        a_img.axis("on")
        draw_boxes(a_img, img, [(ro["box"], PRED_COLOR, "pred"),
                                (r["box"], TRUE_COLOR, "true", dict(ls="--", where="bottom"))])
        a_img.set_title(f"{r['id']}  c={r['c']}\npred: {ro['answer']}\ntrue: {r['label']}  IoU {ro['iou']:.2f}",
                        fontsize=7)
        if ro["box"] is not None:
            a_crop.axis("on")
            draw_boxes(a_crop, crop_image(img, ro["box"], crop_pixels), [])
            a_crop.set_title("crop at predicted box", fontsize=7)
        else:
            a_crop.text(0.5, 0.5, f"no crop\n({ro.get('tool_error')})", ha="center", va="center", fontsize=7,
                        wrap=True)
    return _finish(fig, save_path)


def rolling_mean(values, window: int) -> np.ndarray:
    """Trailing rolling mean that ignores nan (nan only where the whole window is nan)."""
    v = np.asarray(values, float)
    ok = np.isfinite(v)
    w = max(1, int(window))
    s = np.convolve(np.where(ok, v, 0.0), np.ones(w))[:v.size]
    c = np.convolve(ok.astype(float), np.ones(w))[:v.size]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(c > 0, s / np.maximum(c, 1), np.nan)


def _series(rows, key):
    out = []
    for r in rows:
        v = r.get(key, np.nan)
        out.append((float(np.mean(v)) if len(v) else np.nan) if isinstance(v, (list, tuple)) else float(v))
    return np.array(out, float)


def grpo_curves(logs: dict, smooth: Optional[int] = None, save_path=None) -> Figure:
    """GRPO training curves, one colour per named run, trailing rolling mean over `smooth` steps
    (default 10 % of the run): total reward and each component, mean kappa by c, no-signal share,
    tool-call validity / IoU, KL."""
    fig, axes = _figure(3, 3, (13, 9))
    panels = [("total reward (Eq. 3)", [("reward_total", "-")]), ("r_loc (IoU)", [("reward_loc", "-")]),
              ("r_acc", [("reward_acc", "-")]), ("r_fmt", [("reward_fmt", "-")]),
              ("R_group (Eq. 2)", [("reward_group", "-")]),
              ("mean kappa: c=1 (-), c=0 (--)", [("kappa_c1", "-"), ("kappa_c0", "--")]),
              ("share of groups with no signal (all advantages 0)", [("no_signal_share", "-")]),
              ("tool-call valid (-), mean IoU (--)", [("tool_call_valid", "-"), ("mean_iou", "--")]),
              ("KL to reference", [("kl", "-")])]
    for n, (name, rows) in enumerate(logs.items()):
        steps = np.array([r.get("step", i + 1) for i, r in enumerate(rows)], float)
        w = smooth or max(1, len(rows) // 10)
        for ax, (title, keys) in zip(axes.flat, panels):
            for key, ls in keys:
                ax.plot(steps, rolling_mean(_series(rows, key), w), ls, color=f"C{n}", lw=1.2,
                        label=name if ls == "-" else None)
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("step", fontsize=8)
    axes[0, 0].legend(fontsize=7)
    return _finish(fig, save_path)


def pretrain_curves(history: Sequence[dict], evals: Sequence[dict], smooth: Optional[int] = None,
                    save_path=None) -> Figure:
    """Pretraining: each loss vs step (trailing mean over `smooth` steps, default 5 % of the run) and the
    held-out box mIoU and answer accuracy per organ, with the mean-box and majority levels dashed; a dotted
    line marks where rows with a `stage` key change stage."""
    fig, axes = _figure(1, 3, (15, 3.8))
    steps = np.array([r["step"] for r in history], float)
    w = smooth or max(1, len(history) // 20)
    for n, key in enumerate(k for k in ("text", "mask", "pos", "attn") if history and k in history[0]):
        axes[0, 0].plot(steps, rolling_mean(_series(history, key), w), color=f"C{n}", lw=1.2, label=key)
    axes[0, 0].set_yscale("log")
    axes[0, 0].set_title("training losses", fontsize=9)
    organs = [k for k in (evals[0] if evals else {}) if isinstance(evals[0][k], dict)]
    at = [r["step"] for r in evals]
    for n, organ in enumerate(organs):
        for ax, key, base in ((axes[0, 1], "miou", "mean_box_miou"), (axes[0, 2], "acc", "majority_acc")):
            lo = [r[organ][f"{key}_ci"][0] for r in evals]
            hi = [r[organ][f"{key}_ci"][1] for r in evals]
            ax.plot(at, [r[organ][key] for r in evals], "o-", color=f"C{n}", lw=1.2, label=organ)
            ax.fill_between(at, lo, hi, color=f"C{n}", alpha=0.15)
            ax.plot(at, [r[organ][base] for r in evals], "--", color=f"C{n}", lw=1.0)
    starts = [r["step"] for a, r in zip(history, history[1:]) if r.get("stage", 1) != a.get("stage", 1)]
    for ax in axes.flat:                 # where a second stage (new stream, new schedule) begins
        for x in starts:
            ax.axvline(x, color="0.5", ls=":", lw=1.0)
    axes[0, 1].set_title("held-out box mIoU (dashed: mean box)", fontsize=9)
    axes[0, 2].set_title("held-out accuracy from the true crop (dashed: majority)", fontsize=9)
    for ax in axes.flat:
        ax.set_xlabel("step", fontsize=8)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return _finish(fig, save_path)


def grounding_panels(items, cases: Sequence[dict], n: int = 8, save_path=None) -> Figure:
    """The first `n` (sample, image) pairs with the true box (green, dashed) and the model's box (red);
    `cases` are the per-case rows of :func:`zoomdx_lib.eval.grounding.grounding_report`."""
    k = min(n, len(items))
    per_row = max(1, min(4, k))
    nrows = max(1, math.ceil(k / per_row))
    fig, axes = _figure(nrows, per_row, (3.0 * per_row, 3.3 * nrows))
    for ax in axes.flat:
        ax.axis("off")
    for i, ((sample, image), case) in enumerate(zip(items[:k], cases)):
        ax = axes[i // per_row, i % per_row]
        ax.axis("on")
        draw_boxes(ax, image, [(case["box"], PRED_COLOR, "model"),
                               (sample.box, TRUE_COLOR, "true", dict(ls="--", where="bottom"))])
        ax.set_title(f"{sample.organ}  IoU {case['iou']:.2f}\n{sample.attribute}: {case['answer']} "
                     f"(true {sample.label})", fontsize=7)
    return _finish(fig, save_path)


def qualitative_case(record: dict, image, crop_pixels: int, title: str = "", save_path=None) -> Figure:
    """Fig. 3 style: image with the true box and the G predicted boxes, a strip of up to 8 crops,
    and the G answers with short rationales (turn-2 think text)."""
    ros = record["rollouts"]
    mode, kappa = mode_and_kappa([r["answer"] for r in ros])
    fig = Figure(figsize=(12, 6.2), layout="constrained")
    gs = fig.add_gridspec(2, 8, height_ratios=[2.2, 1])
    ax = fig.add_subplot(gs[0, :3])
    same: dict = {}   # identical predicted boxes share one outline labelled "1,2,5"
    for i, r in enumerate(ros):
        if r["box"] is not None:
            same.setdefault(tuple(round(float(v), 1) for v in r["box"]), []).append(i)
    preds = [(b, f"C{ix[0] % 10}", ",".join(str(i + 1) for i in ix), dict(lw=1.0, ls="--")) for b, ix in same.items()]
    draw_boxes(ax, image, preds + [(record["box"], TRUE_COLOR, "true", dict(lw=2.2, where="bottom"))])
    ax.set_title(f"{record['id']}  {record.get('attribute', '')}: y={record['label']}  c={record['c']}", fontsize=9)
    lines = [f"consensus: {mode}   kappa = {kappa:.3f}"]
    for i, r in enumerate(ros):
        mark = "+" if r["answer"] is not None and r["answer"] == record["label"] else "x"
        body = rationale(r.get("turn2") or r.get("turn1"), 80)
        lines.append(textwrap.shorten(f"#{i + 1} [{mark}] {r['answer']}: {body}", 110))
    tx = fig.add_subplot(gs[0, 3:])
    tx.axis("off")
    tx.text(0, 1, "\n".join(lines), va="top", ha="left", family="monospace", fontsize=7.5, transform=tx.transAxes)
    for i, r in enumerate(ros[:8]):
        ca = fig.add_subplot(gs[1, i])
        ca.axis("off")
        if r["box"] is not None:
            draw_boxes(ca, crop_image(image, r["box"], crop_pixels), [])
        else:
            ca.set_box_aspect(1)
            ca.text(0.5, 0.5, "no crop", ha="center", va="center", fontsize=7)
        ca.set_title(f"#{i + 1} {r['answer']}", fontsize=7, color=f"C{i % 10}")
    if title:
        fig.suptitle(title, fontsize=10)
    return _finish(fig, save_path)


def readability_plot(rows: Sequence[dict], save_path=None) -> Figure:
    """Reference-classifier accuracy from the zoom crop and from the full view, per organ and attribute,
    with 95 % intervals and the majority rate (rows from :func:`zoomdx_lib.eval.readability.readability`)."""
    fig, axes = _figure(1, 1, (max(5.0, 1.1 * len(rows) + 1), 3.2))
    ax, x = axes[0, 0], np.arange(len(rows))
    for k, (view, colour) in enumerate((("crop", "tab:blue"), ("full", "tab:orange"))):
        pts = np.array([r[view] for r in rows])
        ax.bar(x + (k - 0.5) * 0.38, pts[:, 0], 0.38, color=colour, label=f"from the {view}",
               yerr=[pts[:, 0] - pts[:, 1], pts[:, 2] - pts[:, 0]], capsize=3)
    ax.scatter(x, [r["majority"] for r in rows], color="k", marker="_", s=300, zorder=3, label="majority")
    ax.set_xticks(x, [f"{r['organ']}\n{r['attribute']}" for r in rows])
    ax.set_ylim(0, 1)
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=8, loc="upper right")
    return _finish(fig, save_path)
