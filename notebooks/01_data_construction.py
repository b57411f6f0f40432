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
# # 01 · Data construction: synthetic B-mode cases, two simulated sonographers, Zoom-then-Diagnose dialogues
#
# Paper §2.1 and §3 "Datasets". Each sample is (image I, lesion box b, diagnosis y, confidence c), with c=1 when
# two sonographers agree and c=0 when they disagree. No ultrasound data can be downloaded at run time, so the
# workbook simulates B-mode images physically (scatterers → point-spread function → envelope → log compression,
# with depth attenuation and gain compensation) for three organ presets: `liver` (convex probe), `breast`
# (linear probe, layered texture) and `thyroid` (the cross-domain zero-shot test, as in the paper).
#
# Two simulated sonographers read each lesion attribute through their own noise and bias; cases near a class
# boundary are the ones they disagree on. Real data (BUS-BRA, BUSI-style folders, CSV/JSONL manifests) comes
# in through the importers and is exported in the same format as an extra real test split.

# %% tags=["parameters"]
profile = "smoke"
run_dir = "../runs/smoke"
seed = 0
overrides = {}        # profile fields to change, e.g. {"grpo__steps": 20, "model__path": "path/to/Qwen2.5-VL-7B-Instruct"}
# Real test splits, each {"name", "importer": "bus_bra" | "busi" | "manifest", "path", **importer options such as
# label_map, attribute, root, limit}; relative paths are under $ZOOMDX_DATA (default: the repo's data/ folder).
real_splits = [{"name": "busbra", "importer": "bus_bra", "path": "bus_bra"}]
# Real images the synthetic ones are measured against (train folds only: fold 3 is BUS-BRA's test fold)
realism_reference = "bus_bra:bus_bra"
realism_folds = [1, 2]
realism_styles = ["default", "bus_bra"]   # imaging styles of the synthetic side (zoomdx_lib.data.synth.STYLES)

# %%
import pandas as pd
from IPython.display import display
from PIL import Image

from zoomdx_lib.data import importers, raters, store
from zoomdx_lib.workbook import viz, widgets as W
from zoomdx_lib.workbook.rundir import setup

run = setup("01_data_construction", profile, run_dir, seed, **overrides)
prof = run.profile

# %% [markdown]
# ## Generate the splits for this profile

# %%
with run.phase("synthetic_generation") as timer:
    splits = store.build_synthetic_splits(prof, run.data_dir)
samples = {name: store.load_split(run.data_dir, name) for name in splits["splits"]}
n_images = sum(len(v) for v in samples.values())
print(f"{n_images} cases in {timer.seconds:.1f} s ({n_images / timer.seconds:.1f} cases/s, images + crops + dialogues written)")
display(pd.DataFrame({k: store.split_summary(v) for k, v in samples.items()}).T)

# %% [markdown]
# ## Examples by attribute label × sonographer confidence (true box drawn)

# %%
pool = samples["train"] + [s for k, v in samples.items() if k.startswith("test_") for s in v]
with_images = [(s, importers.load_image(run.data_dir / s.image_path)) for s in pool[:400]]
viz.example_grid(with_images, rows_key="label", cols_key="c", save_path=run.figure("fig_data_examples.png"));

# %% [markdown]
# ## Disagreement rises with difficulty

# %%
centres, p_c0, counts = raters.disagreement_curve(samples["train"], bins=10)
viz.disagreement_plot(centres, p_c0, counts, save_path=run.figure("fig_data_disagreement.png"));

# %% [markdown]
# ## Class and confidence balance per split

# %%
viz.balance_plot(samples, save_path=run.figure("fig_data_balance.png"));

# %% [markdown]
# ## One Zoom-then-Diagnose dialogue and its crop

# %%
dialogue = store.load_dialogues(run.data_dir, "train")[0]
print(W.messages_text(dialogue["messages"]))
crop_path = dialogue["messages"][2]["content"][0]["image"]
display(Image.open(run.data_dir / crop_path))

# %% [markdown]
# ## Real images: extra test splits
#
# Every entry of `real_splits` becomes a test split `test_{name}` that notebooks 02–04 evaluate like the synthetic
# ones. BUS-BRA has one reader, so its confidence label is a stated **proxy**: c=1 when the BI-RADS reading agrees
# with the biopsy, c=0 otherwise; its attribute is the margin, mapped from the pathology (also a proxy); BUSI
# has no rater agreement at all (c=1 for every case). Bad records are reported, never silently dropped, and
# labels with no parent in the vocabulary are counted per label; the good records are kept.

# %%
imported = store.import_real_splits(real_splits, run.data_dir, prof)
real = {name: r["summary"] for name, r in imported.items()}
display(pd.DataFrame(real).T)
for name, r in imported.items():
    if r["report"] is not None:
        print(r["report"].summary())
        if r["report"].problems:
            display(pd.DataFrame(r["report"].problems, columns=["record", "problem"]).head(20))

# %% [markdown]
# ## Does looking closer add information?
#
# Zooming can only help if the crop holds evidence the full view has lost. A reference classifier that knows
# nothing of the VLM (standardised logistic regression on the pixels, grey and gradient histograms and box aspect
# of a view; `zoomdx_lib.eval.readability`) reads each attribute of fresh cases from two views of the TRUE box:
# the zoom tool's crop, cut from the original image, and the same box cut from the full view at the model's input
# size. Labels are the generator's true classes. Train and test cases come from two seeds no split uses.
# A (crop − full) interval that covers 0 means this data does not reward zooming: with 256 px originals and a
# 224 px full view, both views hold nearly the same pixels.

# %%
from zoomdx_lib.eval import readability as R, realism as RE, tables as TB
from zoomdx_lib.eval.tables import fmt_cell
from zoomdx_lib.workbook import viz_realism

n_read_train, n_read_test = prof.data.readability_cases
with run.phase("readability"):
    readable = [R.readability(o, a, n_read_train, n_read_test, prof.data.image_size, **prof.model.pixel_bounds,
                              crop_pixels=prof.rollout.crop_pixels, n_boot=prof.eval.bootstrap_samples, seed=seed)
                for o in prof.data.organs_train for a in prof.data.attributes]
display(pd.DataFrame([{"organ": r["organ"], "attribute": r["attribute"], "majority": round(100 * r["majority"], 1),
                       **{f"% from {v}": fmt_cell(*r[v], "acc") for v in ("crop", "full", "crop_minus_full")}}
                      for r in readable]))
viz.readability_plot(readable, save_path=run.figure("fig_data_readability.png"));

# %% [markdown]
# ### High-resolution originals with evidence at native scale
#
# The generator can also draw originals several times the full view's side with their fine structure fixed in
# pixels, as a higher-frequency probe would (`generate_case(..., size, detail_scale)`): speckle grain of a few
# original pixels, and the margin drawn at native scale (edge blur and spicules of 1-8 pixels, about one pixel
# of the full view). Echo level, shape and posterior features stay visible at any scale. Two things decide
# whether zooming can pay: how much finer the crop samples the lesion than the full view (`zoom_gain`: capped by
# original / full-view size, and by the crop's pixel budget against the box side), and whether a reader can use
# the extra detail. The same reference classifier reads the margin from both views of these originals.

# %%
native_size, native_detail = prof.data.readability_native
with run.phase("readability_native"):
    readable_native = [R.readability(o, "margin", n_read_train, n_read_test, native_size, **prof.model.pixel_bounds,
                                     crop_pixels=prof.rollout.crop_pixels, n_boot=prof.eval.bootstrap_samples,
                                     seed=seed, detail_scale=native_detail)
                       for o in prof.data.organs_train]
    gains = {f"{size} px": R.zoom_gain_summary("breast", n_read_test, size, prof.model.pixel_bounds,
                                               prof.rollout.crop_pixels, detail)
             for size, detail in ((prof.data.image_size, None), (native_size, native_detail))}
display(pd.DataFrame([{"organ": r["organ"], "attribute": r["attribute"], "original": f"{native_size} px",
                       "majority": round(100 * r["majority"], 1),
                       **{f"% from {v}": fmt_cell(*r[v], "acc") for v in ("crop", "full", "crop_minus_full")}}
                      for r in readable_native]))
display(pd.DataFrame(gains).T.rename(columns=lambda q: f"zoom gain, {q}"))
viz.readability_plot(readable_native, save_path=run.figure("fig_data_readability_native.png"));

# %% [markdown]
# ## How realistic is the speckle?
#
# Grain of the speckle away from the lesion: full width at half maximum of the grey-level autocorrelation,
# axial (down) and lateral (across), as a fraction of the image width, with the grey mean and spread of the same
# patches; median over images with 95 % intervals. Synthetic breast against the real breast split (BUS-BRA) when
# one was imported above.

# %%
grain = {"synthetic breast": R.grain_summary(R.synthetic_grain("breast", n_read_test, prof.data.image_size, seed)),
         f"synthetic breast, {native_size} px native detail": R.grain_summary(
             R.synthetic_grain("breast", n_read_test, native_size, seed, detail_scale=native_detail))}
for name in [name for name, r in imported.items() if r["report"] is not None]:
    grain[name] = R.grain_summary(R.real_grain(store.load_items(run.data_dir, f"test_{name}", n_read_test), seed))
display(pd.DataFrame({k: R.grain_row(v) for k, v in grain.items()}).T)

# %% [markdown]
# ### Synthetic against real B-mode, statistic by statistic
#
# The same measurements on fresh synthetic breast images and on BUS-BRA's train folds: grey mean and spread,
# speckle grain axial and lateral, lesion / background contrast (dB; per echo class for synthetic cases, per
# pathology for BUS-BRA, which has no echo label), lesion size and aspect. Medians with 95 % bootstrap
# intervals (`zoomdx_lib/eval/realism.py`). Where the intervals do not overlap, the generator is off.
# Each style in `realism_styles` images the same synthetic cases: `default` is the generator as the chain
# uses it; `bus_bra` was fitted to these train folds (grey level, dynamic range, point-spread function,
# lesion size), and pretraining can use it (`python -m zoomdx_lib.workbook.base --synth-style bus_bra`).

# %%
with run.phase("realism"):
    realism = RE.realism_comparison(realism_reference, realism_folds, n_read_test, "breast", prof.data.image_size,
                                    seed, prof.eval.bootstrap_samples, styles=realism_styles)
if realism["skipped"]:
    print(realism["skipped"])
TB.write_table(RE.realism_wide(realism["table"]), run.tables_dir, "realism",
               "Synthetic breast against real B-mode: medians with 95 % bootstrap intervals")
display(RE.realism_wide(realism["table"]))
viz_realism.realism_figure(realism["examples"], realism["table"], save_path=run.figure("fig_data_realism.png"));

# %% [markdown]
# ## Browse the samples

# %%
all_samples = [s for v in samples.values() for s in v]
W.sample_browser(all_samples, run.data_dir, prof.rollout.crop_pixels)

# %%
run.write_metrics(dict(profile=prof.name, seed=seed,  # wall-clock times live in phases.json
                       splits={k: store.split_summary(v) for k, v in samples.items()}, real=real,
                       readability=readable, readability_native=readable_native, zoom_gain=gains,
                       speckle_grain=grain, realism=realism["table"].to_dict(orient="records"),
                       realism_skipped=realism["skipped"]))
