# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 06 · The RL study: can our GRPO move anything, and what does it decide?
#
# Notebook 03 trains each RL variant for the cpu profile's short budget; at that size no RL claim of the
# paper can show either way. This notebook reads two experiments that are run outside the chain because
# they take hours on 2 cores:
#
# 1. **Positive controls** (`python -m zoomdx_lib.workbook.rl_controls --control constant|iou|accuracy`):
#    GRPO from the zoom SFT start with a reward that asks for one thing only — one constant answer (no
#    image needed), the IoU of the box, or the right answer — evaluated on fresh cases. If these do not
#    move, nothing subtler can.
# 2. **The study** (`make rl-study`): per seed one SFT start and three arms (accuracy-only, uncertainty
#    with the credit estimator, the paper-literal group estimator) on fresh cases (120 per organ), the
#    claims pooled over seeds with paired intervals, and each claim's power: the interval's half-width,
#    the smallest effect it could detect, and the cases it would need to be decided.
#
# It also asks whether the answer **uses the crop** at all: turn 2 re-answered from the true crop, a blank
# crop and a crop elsewhere in the image.
#
# With the `smoke` profile the notebook runs a miniature study (one seed, one GRPO step, two cases per
# organ) to check the plumbing; its numbers mean nothing.

# %% tags=["parameters"]
profile = "smoke"
run_dir = "../runs/smoke"
seed = 0
overrides = {}       # profile fields for the miniature smoke study, e.g. {"grpo__steps": 2}
study_dir = None     # a finished study folder; None: run_dir/rl_study (smoke) or ../runs/rl_study, else docs/rl_study
controls_dir = None  # folder of the positive controls (controls.json); None: ../runs/rl, else docs/rl_study

# %%
from pathlib import Path

import pandas as pd
from IPython.display import Markdown, display

from zoomdx_lib.workbook import viz_calibration, viz_rl
from zoomdx_lib.workbook.rl_study import STUDY_RECIPE, load_study, run_study
from zoomdx_lib.workbook.rundir import setup

run = setup("06_rl_study", profile, run_dir, seed, **overrides)
prof_name = run.profile.name
committed = Path("../docs/rl_study")
if profile == "smoke":
    study_dir = study_dir or run.dir / "rl_study"
    run_study(study_dir, seeds=[seed], profile_name="smoke", n_eval=2, n_crop=1, progress=False,
              overrides=dict({"grpo__steps": 1, "grpo__checkpoint_every": 1}, **overrides))
elif study_dir is None:
    study_dir = Path("../runs/rl_study") if Path("../runs/rl_study/summary.json").exists() else committed
if controls_dir is None:
    controls_dir = Path("../runs/rl") if Path("../runs/rl/controls.json").exists() else committed
study = load_study(study_dir)
print("study:", study_dir, "·", study["study"])
print("recipe of the study:", STUDY_RECIPE)

# %% [markdown]
# ## 1 · Positive controls
#
# Each row: the quantity the control reads on fresh cases (the share of 8 sampled rollouts giving the constant
# answer; greedy mIoU on c = 1; greedy accuracy on c = 1) before (`start`, the SFT adapter) and after GRPO
# (`end`), with the paired 95 % interval of the change. `overrides` names the recipe; `start_from` says when
# GRPO started from a deliberately degraded start (the recovery control); rows of kind `supervised` train the
# start on the true dialogues instead of a reward (how far supervision itself moves the quantity), with
# `sampled` the same change read over the 8 sampled rollouts that the reward averages.

# %%
controls = pd.read_json(Path(controls_dir) / "controls.json") if (Path(controls_dir) / "controls.json").exists() else pd.DataFrame()
if len(controls):
    controls["kind"] = controls["reference"].fillna("grpo") if "reference" in controls else "grpo"
    display(controls.reindex(columns=["control", "kind", "steps", "start_from", "start", "end", "delta", "delta_ci",
                                      "sampled", "n_cases", "overrides"]).round(3))
    viz_rl.rl_curves({r["name"]: r["curve"] for _, r in controls[controls["kind"] == "grpo"].iterrows()},
                     save_path=run.figure("rl_controls_curves.png"));
else:
    print("no positive controls found: python -m zoomdx_lib.workbook.rl_controls --control constant --out runs/rl")

# %% [markdown]
# ## 2 · Training curves of the study's arms
#
# Reward, policy entropy, the share of token ratios clipped, the KL to the SFT policy, tool-call and answer
# validity, the predicted box's area (fraction of the image) and the groups whose 8 rewards were all equal.

# %%
if study["curves"]:
    viz_rl.rl_curves(study["curves"], save_path=run.figure("rl_study_curves.png"));
    display(pd.DataFrame(study["summary"].get("flatness", {})).T.round(3))

# %% [markdown]
# ### Each method on fresh cases, mean over seeds
#
# Acc and mIoU from greedy answers on c = 1 cases; SAcc, Align, ECE and Gap (bits) from 8 sampled rollouts.

# %%
if len(study["methods"]):
    display(study["methods"].drop(columns="seed").groupby(["method", "dataset"], sort=False).mean().round(3))

# %% [markdown]
# ## 3 · The claims, pooled over seeds
#
# `delta` is better − worse (Align and ECE in 0–1, Gap in bits), averaged over seeds; the interval resamples
# cases within each seed. A claim is **decided** when its interval excludes 0, or when it is a powered null:
# its half-width is at most 0.05 (Align), 0.08 bits (Gap) or 0.03 (ECE). `min_detectable` is the smallest
# true effect the study would find 80 % of the time; `n_to_decide` the cases it would need.

# %%
claims = study["claims"]
if len(claims):
    cols = ["claim", "dataset", "runs", "n", "delta", "low", "high", "verdict", "half_width", "min_detectable",
            "n_to_decide", "decided"]
    display(claims[cols].round(3))
    viz_calibration.claims_forest(claims.to_dict("records"), save_path=run.figure("rl_study_claims.png"));
    decided = int(claims["decided"].sum())
    lines = [f"**{decided} of {len(claims)} claim rows are decided.**"]
    for verdict, part in claims.groupby("verdict"):
        lines.append(f"- {verdict}: " + "; ".join(f"{c} ({d}, {dl:+.3f})" for c, d, dl in
                                                 zip(part["claim"], part["dataset"], part["delta"])))
    display(Markdown("\n".join(lines)))

# %% [markdown]
# ## 4 · Does the answer use the crop?
#
# Greedy turn 1 is kept; turn 2 answers from its own crop, the true crop, a uniform blank crop, or a crop of a
# box of the same size away from the lesion. The number above each bar is the share of answers that changed
# from the own-crop answer. If the blank crop changes few answers, turn 2 reads the full view, not the crop.

# %%
crop = study["crop_use"]
if len(crop):
    display(crop.groupby(["method", "source"], sort=False)[["acc_c1", "acc_all", "changed"]].mean().round(3))
    viz_rl.crop_use_bars(crop, save_path=run.figure("rl_study_crop_use.png"));

# %%
run.write_metrics(dict(
    profile=prof_name, study_dir="run_dir/rl_study" if profile == "smoke" else str(study_dir), seeds=study["summary"].get("seeds", []),
    claims_decided=int(claims["decided"].sum()) if len(claims) else 0, claims_total=int(len(claims)),
    controls={r["name"]: dict(control=r["control"], delta=r["delta"], delta_ci=r["delta_ci"])
              for _, r in controls.iterrows()} if len(controls) else {}))
