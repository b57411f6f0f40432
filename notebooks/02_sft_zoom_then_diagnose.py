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
# # 02 · Zoom-then-Diagnose SFT and greedy evaluation
#
# Paper §2.2 and the Acc/mIoU half of §3.1. The model learns the two-turn format:
#
# 1. **turn 1** — a search rationale in `<think>` and `<tool_call>{"bbox_2d":[x1,y1,x2,y2]}</tool_call>` in
#    model-input pixels;
# 2. the **crop tool** runs (a deterministic crop of the original image at that box) and the crop comes back
#    as a new user image turn;
# 3. **turn 2** — a diagnostic rationale whose tone follows the sonographer confidence and
#    `<answer>{"echo": "Hypoechoic"}</answer>`.
#
# Loss is on the assistant tokens of both turns, with both images in context. As in the paper, the model is
# trained with LoRA (r=32, language model + merger, vision tower frozen) on a pretrained base: the 7B in the
# paper profile, the workbook's pretrained tiny base (notebook 00, `zoomdx_lib/base`) in the cpu and smoke
# profiles. Training runs through TRL's `SFTTrainer` (profile field `sft.engine`; `"explicit"` runs the
# workbook's own loop on the same batches, as a reference). With `model.path` set to None the tiny model is
# instead built from random weights and first gets a from-scratch stage that trains every weight
# (`sft.full_steps`, optionally opened by a short vision warm-up, `sft.warmup_steps`). A **single-turn** model
# (diagnose without zooming) is trained on the same budget for the "no zoom" row.

# %% tags=["parameters"]
profile = "smoke"          # smoke | cpu | paper
run_dir = "../runs/smoke"  # the runner passes an absolute path
seed = 0
overrides = {}        # profile fields to change, e.g. {"grpo__steps": 20, "model__path": "path/to/Qwen2.5-VL-7B-Instruct"}
train_single_turn = True   # also train the no-zoom baseline

# %%
import pandas as pd
from IPython.display import display

from zoomdx_lib.data.store import load_items, test_splits
from zoomdx_lib.eval.generate import Method, evaluate_methods
from zoomdx_lib.eval.scores import greedy_table
from zoomdx_lib.train.recipes import run_sft
from zoomdx_lib.workbook import viz
from zoomdx_lib.workbook.rundir import setup

run = setup("02_sft_zoom_then_diagnose", profile, run_dir, seed, **overrides)
prof = run.profile

# %% [markdown]
# ## Train: LoRA as in the paper (after a from-scratch stage only when no base is given)

# %%
with run.phase("sft_zoom_train"):
    zoom_sft = run_sft(prof, run.dir, mode="zoom")
print(f"zoom SFT: {zoom_sft['n_examples']} dialogues, {zoom_sft['seconds']:.0f} s")
if train_single_turn:
    with run.phase("sft_single_train"):
        single_sft = run_sft(prof, run.dir, mode="single")
    print(f"single-turn SFT: {single_sft['seconds']:.0f} s")

# %%
stages = [("warm-up", "history_warmup"), ("full", "history_full"), ("LoRA", "history_lora")]
curves = {f"zoom · {label}": zoom_sft[key] for label, key in stages}
if train_single_turn:
    curves.update({f"single · {label}": single_sft[key] for label, key in stages})
viz.loss_curve({k: v for k, v in curves.items() if v}, save_path=run.figure("sft_loss.png"));

# %% [markdown]
# ## Greedy evaluation on the test splits
#
# Acc is on consensus (c=1) samples; mIoU compares the predicted box (after the tool's clamping) with the true
# box, on c=1 samples and on all. Tool-call and answer validity count malformed outputs: they score zero and
# are reported, never dropped. Generations are cached in `run_dir/generations/`.

# %%
datasets = {name: load_items(run.data_dir, name) for name in test_splits(run.data_dir)}
methods = [Method("zoom_sft", "zoom", zoom_sft["base"], zoom_sft["adapter"])]
if train_single_turn:
    methods.append(Method("single_turn_sft", "single", single_sft["base"], single_sft["adapter"],
                          instruct=single_sft["instruct"]))
with run.phase("greedy_eval"):
    results = evaluate_methods(methods, datasets, prof, run.generations_dir, modes=("greedy",), seeds=(seed,))
table = pd.DataFrame(greedy_table(results, [m.name for m in methods], list(datasets), seed,
                                  prof.eval.bootstrap_samples))
cols = ["method", "dataset", "n_c1", "acc", "acc_low", "acc_high", "miou_c1", "miou_all", "tool_call_valid", "answer_valid"]
display(table[cols].round(3))

# %%
first = next(iter(datasets))
images = {s.id: img for s, img in datasets[first]}
viz.prediction_panels(results[("zoom_sft", first, "greedy", seed)], images, prof.rollout.crop_pixels, n=6,
                      save_path=run.figure("sft_predictions.png"));

# %%
run.write_metrics(dict(profile=prof.name, seed=seed,
                       final_loss_zoom=(zoom_sft["history_lora"] or zoom_sft["history_full"])[-1]["loss"],
                       greedy=table.to_dict(orient="records"), models=run.registry(methods)))
