"""Synthetic against real B-mode: example images side by side and each image statistic with its interval
(:mod:`zoomdx_lib.eval.realism`)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.patches import Rectangle

from ..eval.realism import STATS
from .viz import TRUE_COLOR, _figure, _finish

STAT_TITLES = dict(grey_mean="grey mean", grey_std="grey spread", axial_rel="grain, axial (/width)",
                   lateral_rel="grain, lateral (/width)", contrast_db="lesion contrast (dB)",
                   size_rel="lesion size (/width)", aspect="aspect (depth / width)")


def realism_figure(examples: dict, table: pd.DataFrame, n_images: int = 4, save_path=None):
    """Top: `n_images` images of each source (one row per source, true box drawn); bottom: the median of every
    statistic per source with its 95 % interval (:func:`zoomdx_lib.eval.realism.realism_table`, group "all").

    examples: {source name: [(sample, image), ...]}. Returns the figure.
    """
    sources = list(examples)
    cols = max(n_images, len(STATS))
    fig, axes = _figure(len(sources) + 1, cols, (1.9 * cols, 2.0 * (len(sources) + 1)))
    for r, source in enumerate(sources):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_axis_off()
            if c >= min(n_images, len(examples[source])):
                continue
            sample, image = examples[source][c]
            ax.imshow(np.asarray(image.convert("L")), cmap="gray", vmin=0, vmax=255)
            x1, y1, x2, y2 = sample.box
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color=TRUE_COLOR, lw=1))
            if c == 0:
                ax.set_title(source, fontsize=8, loc="left")
    overall = table[table["group"] == "all"]
    for c in range(cols):
        ax = axes[-1][c]
        if c >= len(STATS):
            ax.set_axis_off()
            continue
        part = overall[overall["statistic"] == STATS[c]].set_index("source").reindex(sources)
        ys = np.arange(len(sources))
        ax.errorbar(part["median"], ys, xerr=[part["median"] - part["low"], part["high"] - part["median"]],
                    fmt="o", ms=4, capsize=3)
        ax.set_yticks(ys, [s if c == 0 else "" for s in sources], fontsize=7)
        ax.set_ylim(-0.6, len(sources) - 0.4)
        ax.set_title(STAT_TITLES[STATS[c]], fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
    return _finish(fig, save_path)
