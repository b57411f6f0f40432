# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 · GRPO with the uncertainty-alignment reward
#
# Paper §2.3 and §3.3. From the SFT adapter of notebook 02, each GRPO step samples G=8 Zoom-then-Diagnose
# rollouts per prompt at T=0.7 (the crop tool runs between the turns), scores them, and updates the LoRA
# weights with a clipped policy-gradient loss on the model's own tokens of both turns.
#
# Rewards (Eq. 3): λ_loc·IoU + 1[c=1]·λ_acc·acc + λ_fmt·format + λ_align·R_group, with 0.1 / 0.3 / 0.1 / 0.5 and
# R_group = 1[κ≥δ]·ξ on consensus cases and 1[κ<δ] on ambiguous ones (δ=0.75).
#
# **The cancellation.** R_group is one number per group, so under the paper's group-normalised advantage
# (R_i − mean)/std it cancels exactly (`tests/rl/test_rewards.py` proves it). Three estimators are offered:
# `group` (the paper as written: the group term never reaches the gradient), `batch` (baseline and scale over
# the whole batch), and `credit` (per-rollout leave-one-out credit R_group(T) − R_group(T∖τ_i), added before
# group normalisation). This notebook trains the accuracy-only ablation and the uncertainty-aligned variant
# with the chosen estimator, plus the paper-literal `group` row.

# %% tags=["parameters"]
profile = "smoke"
run_dir = "../runs/smoke"
seed = 0
overrides = {}        # profile fields to change, e.g. {"grpo__steps": 20, "model__path": "path/to/Qwen2.5-VL-7B-Instruct"}
estimator = "credit"        # group | batch | credit
also_paper_group = None     # also train the paper-literal `group` estimator row (None: the profile's choice)

# %%
import pandas as pd
from IPython.display import display

from zoomdx_lib.data.store import load_items, test_splits
from zoomdx_lib.eval.generate import Method, evaluate_methods
from zoomdx_lib.eval.scores import greedy_table
from zoomdx_lib.train.grpo import RESULT_KEYS, log_end_values
from zoomdx_lib.train.recipes import run_grpo
from zoomdx_lib.workbook import viz
from zoomdx_lib.workbook.rundir import setup

run = setup("03_grpo_uncertainty_alignment", profile, run_dir, seed, **overrides)
prof = run.profile
sft = run.models("02_sft_zoom_then_diagnose")["zoom_sft"]
print("starting from", sft.adapter)
print(f"GRPO engine: {prof.grpo.engine}"   # "explicit": the workbook's step; "trl": TRL's GRPOTrainer (same update)
      + (" with vLLM generation" if prof.grpo.engine == "trl" and prof.grpo.use_vllm else ""))

# %%
variants = [("accuracy_only", "group"), ("uncertainty", estimator)]
if also_paper_group is None:
    also_paper_group = prof.grpo.paper_group_row
if also_paper_group and estimator != "group":
    variants.append(("uncertainty", "group"))
runs = {}
for variant, est in variants:
    r = run_grpo(prof, run.dir, variant, est, sft.base, sft.adapter)
    runs[r["name"]] = r
    run.record_phase(f"{r['name']}_generation", r["time_generation_s"])
    run.record_phase(f"{r['name']}_update", r["time_update_s"])
    print(f"{r['name']}: {len(r['log'])} steps, {r['seconds']:.0f} s "
          f"(generation {r['time_generation_s']:.0f} s, update {r['time_update_s']:.0f} s)")

# %% [markdown]
# ## Training curves: reward components, κ by c, the share of groups with no signal

# %%
viz.grpo_curves({k: v["log"] for k, v in runs.items()}, save_path=run.figure("grpo_curves.png"));

# %%
end_values = {name: log_end_values(r["log"], last=5, keys=RESULT_KEYS) for name, r in runs.items()}
display(pd.DataFrame(end_values).T.round(3))

# %% [markdown]
# ## Greedy Acc / mIoU after each RL variant, next to SFT

# %%
datasets = {name: load_items(run.data_dir, name) for name in test_splits(run.data_dir)}
rl_methods = [Method(name, "zoom", r["base"], r["adapter"]) for name, r in runs.items()]
methods = [sft] + rl_methods
with run.phase("greedy_eval"):
    results = evaluate_methods(methods, datasets, prof, run.generations_dir, modes=("greedy",), seeds=(seed,))
table = pd.DataFrame(greedy_table(results, [m.name for m in methods], list(datasets), seed,
                                  prof.eval.bootstrap_samples))
display(table[["method", "dataset", "acc", "acc_low", "acc_high", "miou_c1", "tool_call_valid", "answer_valid"]].round(3))

# %%
run.write_metrics(dict(profile=prof.name, seed=seed, estimator=estimator, engine=prof.grpo.engine,
                       end_values=end_values,
                       greedy=table.to_dict(orient="records"), models=run.registry(rl_methods)))
