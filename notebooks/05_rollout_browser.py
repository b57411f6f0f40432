# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 05 · Rollout browser
#
# Browse the cached generations of notebook 04: choose a dataset, a method and a case; filter by the
# sonographer confidence c, by whether the consensus answer is correct, and by κ. Each case shows the image with
# the true box (green) and the G predicted boxes, every crop the tool returned, each turn's text, the parsed
# answer and every reward component of Eq. 3 computed from that rollout.

# %% tags=["parameters"]
profile = "smoke"
run_dir = "../runs/smoke"
seed = 0
overrides = {}        # profile fields to change, e.g. {"grpo__steps": 20, "model__path": "path/to/Qwen2.5-VL-7B-Instruct"}
mode = "sample"     # sample: 8 rollouts at temperature 0.7; or greedy

# %%
import pandas as pd
from IPython.display import display

from zoomdx_lib.workbook import widgets as W
from zoomdx_lib.workbook.rundir import setup

run = setup("05_rollout_browser", profile, run_dir, seed, **overrides)
records_by = W.cached_rollouts(run.generations_dir, mode, seed)
print(f"{len(records_by)} (dataset, method) pairs cached")

# %%
browser = W.rollout_browser(records_by, W.split_image_loader(run.data_dir), run.profile.rollout.crop_pixels)
browser

# %%
summary = [dict(dataset=d, method=m, cases=len(r), shown_after_filter=len(W.filter_records(r, c=0)))
           for (d, m), r in sorted(records_by.items())]
display(pd.DataFrame(summary))
run.write_metrics(dict(profile=run.profile.name, pairs=len(records_by), summary=summary))
