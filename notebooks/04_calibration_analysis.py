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
# # 04 · Calibration analysis: the paper's tables and figures
#
# Paper §3.1–3.3. Every method is evaluated on every test split from real generations: greedy for Acc and mIoU,
# and 8 rollouts at T=0.7 for the consensus answer and its confidence ĉ = κ (Eq. 1), from which SAcc, Align,
# ECE and the Entropy Gap (bits) follow. Each number carries a 95 % bootstrap interval over cases.
#
# Rows: single-turn SFT (no zoom), zoom SFT, oracle crop (the true box is given; an upper bound for the zoom),
# accuracy-only RL, uncertainty RL with the paper-literal `group` estimator and with the `credit` estimator.
# Any Qwen2.5-VL checkpoint can be added as a row through `extra_checkpoints`.

# %% tags=["parameters"]
profile = "smoke"
run_dir = "../runs/smoke"
seed = 0
overrides = {}        # profile fields to change, e.g. {"grpo__steps": 20, "model__path": "path/to/Qwen2.5-VL-7B-Instruct"}
extra_checkpoints = {}      # {"name": "path/to/Qwen2.5-VL-7B-Instruct"}: zero-shot two-turn rows
crop_use_cases = 40         # liver and breast test cases each for "does the answer use the crop?" (0: skip)

# %%
import pandas as pd
from IPython.display import Markdown, display

from zoomdx_lib.data.store import load_items, test_splits
from zoomdx_lib.eval import tables as TB
from zoomdx_lib.eval.claims import paper_claims as paired_claims
from zoomdx_lib.eval.generate import evaluate_methods
from zoomdx_lib.eval.scores import calibration_arrays, pick_ambiguous_case, rationale_scores
from zoomdx_lib.eval.crop_use import crop_use_cache_name, crop_use_rows
from zoomdx_lib.workbook import viz, viz_calibration, viz_rl
from zoomdx_lib.workbook.rundir import evaluation_methods, setup

run = setup("04_calibration_analysis", profile, run_dir, seed, **overrides)
prof = run.profile
methods = evaluation_methods(run, extra_checkpoints)
print([m.name for m in methods])

# %%
datasets = {name: load_items(run.data_dir, name) for name in test_splits(run.data_dir)}
with run.phase("evaluation_generation"):
    results = evaluate_methods(methods, datasets, prof, run.generations_dir, modes=("greedy", "sample"),
                               seeds=(seed,))
names, dsets = [m.name for m in methods], list(datasets)
with run.phase("tables_bootstrap"):
    T = TB.build_tables(results, names, dsets, seed, prof.eval.bootstrap_samples, prof.hp.delta,
                        ablation_dataset="test_liver" if "test_liver" in dsets else dsets[0],
                        ablation_methods=[n for n in ("zoom_sft", "grpo_accuracy_only", "grpo_uncertainty_group",
                                                      "grpo_uncertainty_credit") if n in names])
for key, caption in TB.CAPTIONS.items():
    TB.write_table(T[key], run.tables_dir, key, caption)
    display(Markdown(f"**{caption}**"))
    display(T[key])
T["long"].to_csv(run.tables_dir / "all_numbers_long.csv", index=False)

# %% [markdown]
# ### The paper's published numbers beside ours (measured on different data and models)

# %%
best = "grpo_uncertainty_credit" if "grpo_uncertainty_credit" in names else names[-1]
side = TB.paper_side_by_side(T["long"], best)
TB.write_table(side, run.tables_dir, "paper_vs_ours", "Paper (Qwen2.5-VL-7B, real data) vs this run (tiny model, synthetic data)")
display(side)

# %% [markdown]
# ## Figures: κ distributions (Fig. 1), reliability, risk–coverage, a qualitative ambiguous case (Fig. 3)

# %%
arrays = {d: {m: calibration_arrays(results[(m, d, "sample", seed)]) for m in names} for d in dsets}
main = dsets[0]
viz_calibration.kappa_distributions(arrays[main], save_path=run.figure("fig1_kappa_distributions.png"));

# %%
viz_calibration.reliability_diagram(arrays[main], n_bins=10, save_path=run.figure("reliability_diagrams.png"));

# %%
viz_calibration.risk_coverage_plot(arrays[main], delta=prof.hp.delta, save_path=run.figure("risk_coverage.png"));

# %%
images = {s.id: img for s, img in datasets[main]}
case = pick_ambiguous_case(results[(best, main, "sample", seed)])
baseline = "grpo_accuracy_only" if "grpo_accuracy_only" in names else "zoom_sft"
other = next(r for r in results[(baseline, main, "sample", seed)] if r["id"] == case["id"])
viz.qualitative_case(case, images[case["id"]], prof.rollout.crop_pixels, title=f"{best}: ambiguous case {case['id']}",
                     save_path=run.figure("fig3_qualitative_best.png"));
viz.qualitative_case(other, images[case["id"]], prof.rollout.crop_pixels, title="accuracy-only RL: same case",
                     save_path=run.figure("fig3_qualitative_accuracy_only.png"));

# %% [markdown]
# ### Report-text scores of the diagnostic rationales (BLEU-1, ROUGE-L against the reference rationale)

# %%
text_scores = pd.DataFrame(rationale_scores(results, names, dsets, run.data_dir, seed))
TB.write_table(text_scores.set_index(["method", "dataset"]), run.tables_dir, "report_text_scores")
display(text_scores.round(3))

# %% [markdown]
# ## Does the answer use the crop?
#
# Each two-turn method keeps its greedy turn 1; turn 2 answers from its own crop, the true crop, a uniform
# blank crop at the image's mean grey, or a same-size crop away from the lesion. `changed` is the share of
# answers that differ from the own-crop answer. If the blank crop changes few answers, turn 2 reads the
# question and the full view, not the crop, and the zoom is redundant for that method.

# %%
crop_use = pd.DataFrame()
if crop_use_cases:
    with run.phase("crop_use"):
        crop_use = pd.DataFrame(crop_use_rows(methods, datasets, prof, run.generations_dir /
                                              crop_use_cache_name(methods, prof, crop_use_cases), crop_use_cases))
if len(crop_use):
    TB.write_table(crop_use.set_index(["method", "source"]).round(4), run.tables_dir, "crop_use",
                   "Turn 2 answered from other crops (liver + breast test cases): accuracy and answers changed")
    display(crop_use.set_index(["method", "source"]).round(3))
    viz_rl.crop_use_bars(crop_use, save_path=run.figure("crop_use.png"));

# %% [markdown]
# ## What the tables say about the paper's claims
#
# Each claim compares two methods on the *same* cases, so it is judged by a paired bootstrap interval of the
# difference (better − worse, cases resampled once for both methods): `supported` when the whole 95 %
# interval lies on the claimed side of 0, `contradicted` when it lies wholly on the other side, otherwise
# `not separable from noise`. The `liver+breast` rows pool the two training organs' cases.
#
# One chain is one draw of the training data and of every training step: at the cpu profile's 40 test cases
# the seed-to-seed spread is as large as the effects (README). To judge a claim over several chains (run
# with `--seed 0`, `--seed 1`, ...), `python -m zoomdx_lib.eval.claims RUN_DIR [RUN_DIR ...]` averages each
# run's paired difference, resamples cases within each run, and lists each run's own value beside the mean.

# %%
with run.phase("claims_bootstrap"):
    claims = paired_claims(results, dsets, seed, prof.eval.bootstrap_samples, prof.hp.delta)
claims_table = pd.DataFrame(claims).set_index(["claim", "dataset"])
TB.write_table(claims_table.round(4), run.tables_dir, "claims", "The paper's claims: paired differences "
               "(better − worse) with 95 % bootstrap intervals")
display(claims_table[["n", "delta", "low", "high", "verdict"]].round(3))
viz_calibration.claims_forest(claims, save_path=run.figure("claims_paired.png"));

# %%
run.write_metrics(dict(profile=prof.name, seed=seed, methods=names, datasets=dsets,
                       numbers=T["long"].to_dict(orient="records"), claims=claims,
                       text_scores=text_scores.to_dict(orient="records"), crop_use=crop_use.to_dict(orient="records")))
