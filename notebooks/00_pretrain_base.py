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
# # 00 · A tiny base that sees: pretraining the offline model
#
# The paper starts from Qwen2.5-VL-7B, a model that already finds objects and reads images. The offline
# tiny Qwen2.5-VL starts from random weights, and text loss alone never makes it look: trained only on the
# dialogues, its box stays near the mean training box and its answers at the majority rate, even from the
# crop of the true box. This notebook shows the stage that gives the workbook a base that sees
# (`zoomdx_lib.train.pretrain`), and checks the base on fresh cases.
#
# **What it learns from.** A stream of freshly generated liver and breast cases (never a test split's
# seed, never thyroid, never real images), each a full Zoom-then-Diagnose dialogue with the *true* box:
# turn 1 writes the tool call, the zoom tool's own crop comes back, turn 2 answers. Cross-entropy on both
# assistant turns, plus two auxiliary losses that teach it *where* to look:
#
# - **mask**: a head on every visual token predicts how much of its patch lies inside the lesion box;
# - **pos**: a head makes every visual token say its own row and column (rotary positions steer attention
#   but never enter what a token carries, so without this no token can tell the text where it is).
#
# A third, **attn** (one attention head per layer pulled onto the lesion's tokens while a box digit is
# written), is available (`PretrainConfig(aux=("mask", "pos", "attn"))`) but off: beside the other two it
# slowed localisation and ended worse on breast (the README's ablation table). Without any auxiliary loss
# the box stays at the mean-box level.
#
# The heads are dropped at export: the base is a stock `Qwen2_5_VLForConditionalGeneration` folder,
# shipped in `zoomdx_lib/base` with a model card and SHA-256 checksums. By default this notebook
# *inspects the shipped base*; set `pretrain_steps` to train one here (`make base` trains the shipped
# recipe in two stages: 2000 steps, the first 1000 without isoechoic lesions (easy contrast first), then
# 1200 more on a new stream in which half the cases carry the SFT data's rationales; 1.3–2 h on 2 cores,
# resumable).

# %% tags=["parameters"]
profile = "smoke"          # smoke | cpu | paper
run_dir = "../runs/smoke"  # the runner passes an absolute path
seed = 0
overrides = {}        # profile fields to change, e.g. {"grpo__steps": 20}
pretrain_steps = 0    # 0: inspect the shipped base; N > 0: pretrain a base here for N steps
n_check = 16          # fresh cases per organ for the grounding check
check_seed = 9001     # generator seed of those cases (no training or tuning used it)

# %%
import json

import pandas as pd
from IPython.display import Markdown, display

from zoomdx_lib.config import SHIPPED_BASE, PretrainConfig
from zoomdx_lib.eval.grounding import fresh_cases, grounding_report
from zoomdx_lib.model.load import load_model_and_processor, verify_checksums
from zoomdx_lib.train.pretrain import pretrain
from zoomdx_lib.workbook import viz
from zoomdx_lib.workbook.base import held_out_eval
from zoomdx_lib.workbook.rundir import setup

run = setup("00_pretrain_base", profile, run_dir, seed, **overrides)

# %% [markdown]
# ## The base: shipped, or trained here

# %%
if pretrain_steps > 0:
    cfg = PretrainConfig(steps=pretrain_steps, batch_size=4 if pretrain_steps < 50 else 16,
                         checkpoint_every=max(1, min(100, pretrain_steps // 2)), seed=seed)
    out = run.dir / "models" / "base_pretrain"
    with run.phase("pretrain"):
        result = pretrain(cfg, out, evaluate=held_out_eval(cfg, n=8 if pretrain_steps < 50 else 64),
                          eval_every=max(1, pretrain_steps // 4))
    base_dir, history, evals = out / "model", result["history"], result["evals"]
    print(f"pretrained {pretrain_steps} steps into {base_dir}")
else:
    base_dir = SHIPPED_BASE
    card = json.loads((base_dir / "card.json").read_text())
    cfg = PretrainConfig.from_dict(card["config"])
    history, evals = card.get("history", []), card["curves"]
    print(f"shipped base, SHA-256 checked: {verify_checksums(base_dir)}")
    display(Markdown((base_dir / "MODEL_CARD.md").read_text()))

# %% [markdown]
# ## Curves
#
# Left: the losses (the auxiliary ones fall first: the tower learns where the lesion is before the text
# can say it). Middle and right: box mIoU and answer accuracy on held-out fresh cases during training, with
# 95 % bootstrap bands; dashed lines are the constant answers chosen in hindsight (the mean box of those
# cases, the majority label), which a model beats only by looking.

# %%
viz.pretrain_curves(history, evals, save_path=run.figure("pretrain_curves.png"));

# %% [markdown]
# ## Does it see? Fresh cases of every organ
#
# Turn 1 is the model's own greedy box; accuracy is turn 2's answer given the crop of the TRUE box (reading
# the lesion, with finding it taken out). Thyroid never appears in pretraining: it is the zero-shot organ.

# %%
model, processor = load_model_and_processor(base_dir, min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels)
rows, shown = [], {}
for organ in ("liver", "breast", "thyroid"):
    items = fresh_cases(organ, n_check, check_seed, cfg.image_size)
    r = grounding_report(model, processor, items, cfg.crop_pixels, (48, 24), seed=check_seed, per_case=True)
    shown[organ] = (items, r.pop("cases"))
    rows.append(dict(organ=organ, **r))
table = pd.DataFrame(rows).set_index("organ")
display(table[["n", "miou", "miou_ci", "mean_box_miou", "acc", "acc_ci", "majority_acc", "tool_call_valid"]].round(3))

# %%
items = [it for organ in shown for it in shown[organ][0][:4]]
cases = [c for organ in shown for c in shown[organ][1][:4]]
viz.grounding_panels(items, cases, n=12, save_path=run.figure("pretrain_boxes.png"));

# %%
run.write_metrics(dict(profile=run.profile.name, seed=seed, pretrain_steps=pretrain_steps,
                       base="zoomdx_lib/base" if pretrain_steps == 0 else "models/base_pretrain/model",
                       grounding={r["organ"]: {k: r[k] for k in ("n", "miou", "miou_ci", "mean_box_miou", "acc",
                                                                  "acc_ci", "majority_acc", "tool_call_valid")}
                                  for r in rows}))
