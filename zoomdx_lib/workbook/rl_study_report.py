"""The RL study's results page, generated from the study folder (``report.md`` beside ``claims.csv``).

:func:`study_report` turns what :func:`zoomdx_lib.workbook.rl_study.load_study` reads into markdown: each
method's metrics over the seeds, the liver + breast claims with their verdicts, the single-organ claims, how
far the answer uses the crop, and the time per seed. Verdicts: *supported* / *contradicted* when the interval
over cases excludes 0, *powered null* when it does not but is narrow enough to exclude an effect of the
deciding size (:data:`~zoomdx_lib.eval.power.DECIDE_HALF_WIDTH`), *undecided* otherwise, with the cases it
would need.
"""
from __future__ import annotations

import pandas as pd

from ..eval.power import DECIDE_HALF_WIDTH

METHOD_NAMES = {"zoom_sft": "zoom SFT", "grpo_accuracy_only": "accuracy-only RL",
                "grpo_uncertainty_credit": "uncertainty RL, credit", "grpo_uncertainty_group": "uncertainty RL, group"}
ORGAN_LETTERS = {"test_liver": "L", "test_breast": "B", "test_thyroid": "T"}
POOLED = "liver+breast"


def verdict_label(row) -> str:
    """How a claims.csv row reads.

    >>> verdict_label(dict(decided=True, verdict="not separable from noise", n_to_decide=100))
    'powered null'
    >>> verdict_label(dict(decided=False, verdict="not separable from noise", n_to_decide=1497))
    'undecided (about 1497 cases)'
    """
    if not row["decided"]:
        return f"undecided (about {int(row['n_to_decide'])} cases)"
    return "powered null" if row["verdict"] == "not separable from noise" else str(row["verdict"])


def _interval(row, digits: int = 3) -> str:
    return f"{row['delta']:+.{digits}f} [{row['low']:+.{digits}f}, {row['high']:+.{digits}f}]"


def _table(frame: pd.DataFrame) -> str:
    return frame.to_markdown(index=False, disable_numparse=True) + "\n"   # keep "0.30" as formatted


def methods_section(methods: pd.DataFrame) -> str:
    """Each method's mean over seeds, the three organs side by side (L / B / T)."""
    mean = methods.drop(columns="seed").groupby(["method", "dataset"], sort=False).mean()
    cols = [("acc", "Acc", 3), ("miou_c1", "mIoU", 3), ("align", "Align", 2), ("ece10", "ECE", 2),
            ("gap", "Gap (bits)", 2), ("kappa", "mean kappa", 2), ("consensus_acc", "consensus Acc", 2)]
    rows = []
    for method in dict.fromkeys(mean.index.get_level_values(0)):
        row = {"method": METHOD_NAMES.get(method, method)}
        for key, title, digits in cols:
            if key in mean.columns:
                row[f"{title} L / B / T"] = " / ".join(f"{mean.loc[(method, d), key]:.{digits}f}"
                                                      if (method, d) in mean.index else "–" for d in ORGAN_LETTERS)
        rows.append(row)
    return ("Mean over the seeds. Acc and mIoU: greedy answers on c = 1 cases; Align, ECE, Gap, mean kappa "
            "(the 8 rollouts' agreement) and the consensus answer's accuracy: 8 sampled rollouts, every case. "
            "Mean kappa above the consensus accuracy is overconfidence, which ECE measures.\n\n" + _table(pd.DataFrame(rows)))


def claims_section(claims: pd.DataFrame, pooled: bool) -> str:
    part = claims[(claims["dataset"] == POOLED) == pooled]
    rows = []
    for _, r in part.iterrows():
        target = DECIDE_HALF_WIDTH.get(r["metric"])
        row = {"claim": r["claim"]}
        if not pooled:
            row["organ"] = r["dataset"].replace("test_", "")
        row.update({"Δ [95 % CI over cases]": _interval(r), "seeds agree": f"{int(r['agree'])} / {int(r['runs'])}",
                    "verdict": verdict_label(r),
                    "half-width (target)": f"{r['half_width']:.3f} ({target})" if target else f"{r['half_width']:.3f}"})
        if pooled:   # no t-interval from a single seed
            row["over seeds [95 % t]"] = (f"[{r['seed_low']:+.3f}, {r['seed_high']:+.3f}]" if pd.notna(r["seed_low"])
                                          else "–")
        rows.append(row)
    return _table(pd.DataFrame(rows)) if rows else "No claims pooled yet.\n"


def crop_section(crop: pd.DataFrame) -> str:
    mean = crop.groupby(["method", "source"], sort=False)[["acc_c1", "changed"]].mean()
    rows = []
    for method in dict.fromkeys(mean.index.get_level_values(0)):
        get = lambda source, key: mean.loc[(method, source), key] if (method, source) in mean.index else float("nan")  # noqa: E731
        rows.append({"method": METHOD_NAMES.get(method, method), **{title: f"{get(s, 'acc_c1'):.3f}" for s, title in
                                                                   (("own", "own crop"), ("true", "true crop"),
                                                                    ("blank", "blank crop"), ("elsewhere", "crop elsewhere"))},
                     "changed by blank": f"{get('blank', 'changed'):.2f}",
                     "changed by elsewhere": f"{get('elsewhere', 'changed'):.2f}"})
    return ("Turn 2 answered again from other crops: accuracy on c = 1 cases, and the share of answers that "
            "change against the method's own crop; mean over the seeds.\n\n" + _table(pd.DataFrame(rows)))


def study_report(study: dict) -> str:
    """The results page of a study folder read by ``load_study``: {study, summary, claims, crop_use, methods}."""
    summary, setup, claims = study["summary"], study["study"], study["claims"]
    seeds = summary.get("seeds", [])
    seconds = summary.get("seconds", {})
    lines = [f"# RL study: {len(seeds)} seed{'s' if len(seeds) != 1 else ''}", "",
             "Generated by `python -m zoomdx_lib.workbook.rl_study` from this folder's files; do not edit by hand.",
             "",
             f"- seeds: {', '.join(map(str, seeds))}; base weights digest: {', '.join(summary.get('bases', [])) or 'unknown'}"]
    if setup:
        lines.append(f"- profile `{setup['profile']}`, recipe {setup['overrides']}; {setup['n_eval']} fresh cases "
                     f"per organ per seed, crop use on {setup['n_crop']} + {setup['n_crop']}")
    lines.append(f"- claims decided: {summary.get('decided', 0)} of {summary.get('claims_total', 0)}")
    if seconds:
        values = sorted(seconds.values())
        lines.append(f"- time per seed: {values[0]:.0f}–{values[-1]:.0f} s (median {values[len(values) // 2]:.0f} s)")
    lines += ["", "## Methods", "", methods_section(study["methods"]) if len(study["methods"]) else "No seed yet.\n"]
    if len(claims):
        lines += ["## Claims, liver + breast", "",
                  "Δ is the first method minus the second; for ECE, lower is the claimed side. Seeds agree: the seeds "
                  "whose own difference is on the claimed side. Over seeds: a t-interval over the seeds' own differences.",
                  "", claims_section(claims, True), "## Claims per organ", "", claims_section(claims, False)]
    if len(study["crop_use"]):
        lines += ["## Does the answer use the crop?", "", crop_section(study["crop_use"])]
    return "\n".join(lines)
