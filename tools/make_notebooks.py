"""Regenerate the numbered notebooks from the cell sources below (outputs stripped).

    python tools/make_notebooks.py

Notebooks hold narrative, parameters, calls and plots; the logic lives in zoomdx_lib.
"""
from pathlib import Path

from nbbuild import build

NB = Path(__file__).resolve().parent.parent / "notebooks"

COMMON_IMPORTS = """
import json, time
from pathlib import Path
import matplotlib
import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import display, Markdown
from zoomdx_lib.config import get_profile
from zoomdx_lib.pipeline import write_metrics, record_phase, run_path, resolve_run_path
prof = get_profile(profile, seed=seed)
run_dir = Path(run_dir).resolve()
data_dir = run_dir / "data"
fig_dir = run_dir / "figures"
fig_dir.mkdir(parents=True, exist_ok=True)
NOTEBOOK = "{name}"
print(f"profile={prof.name}  run_dir={run_dir}")
"""

NB01 = [
    ("md", """
# 01 · Data construction: synthetic B-mode cases, two simulated sonographers, Zoom-then-Diagnose dialogues

Paper §2.1 and §3 "Datasets". Each sample is (image I, lesion box b, diagnosis y, confidence c), with c=1 when
two sonographers agree and c=0 when they disagree. No ultrasound data can be downloaded at run time, so the
workbook simulates B-mode images physically (scatterers → point-spread function → envelope → log compression,
with depth attenuation and gain compensation) for three organ presets: `liver` (convex probe), `breast`
(linear probe, layered texture) and `thyroid` (the cross-domain zero-shot test, as in the paper).

Two simulated sonographers read each lesion attribute through their own noise and bias; cases near a class
boundary are the ones they disagree on. Real data (BUS-BRA, BUSI-style folders, CSV/JSONL manifests) comes
in through the importers and is exported in the same format as an extra real test split.
"""),
    ("params", """
profile = "smoke"
run_dir = "../runs/smoke"
seed = 0
real_data_dir = "../../shared/data/bus_bra"   # BUS-BRA layout; "" to skip the real test split
"""),
    ("code", COMMON_IMPORTS.replace("{name}", "01_data_construction") + """
from PIL import Image
from zoomdx_lib import datasets as D, synth, viz, widgets as W
"""),
    ("md", "## Generate the splits for this profile"),
    ("code", """
t0 = time.perf_counter()
splits = D.build_synthetic_splits(prof, data_dir)
gen_seconds = time.perf_counter() - t0
record_phase(run_dir, NOTEBOOK, "synthetic_generation", gen_seconds)
samples = {name: D.load_split(data_dir, name) for name in splits["splits"]}
n_images = sum(len(v) for v in samples.values())
print(f"{n_images} cases in {gen_seconds:.1f} s ({n_images / gen_seconds:.1f} cases/s, images + crops + dialogues written)")
display(pd.DataFrame({k: dict(n=len(v), c0_rate=sum(s.c == 0 for s in v) / max(1, len(v)))
                      for k, v in samples.items()}).T)
"""),
    ("md", "## Examples by attribute label × sonographer confidence (true box drawn)"),
    ("code", """
pool = samples["train"] + [s for k, v in samples.items() if k.startswith("test_") for s in v]
with_images = [(s, D.load_image(data_dir / s.image_path)) for s in pool[:400]]
viz.example_grid(with_images, rows_key="label", cols_key="c", save_path=fig_dir / "fig_data_examples.png");
"""),
    ("md", "## Disagreement rises with difficulty"),
    ("code", """
centres, p_c0, counts = synth.disagreement_curve(samples["train"], bins=10)
viz.disagreement_plot(centres, p_c0, counts, save_path=fig_dir / "fig_data_disagreement.png");
"""),
    ("md", "## Class and confidence balance per split"),
    ("code", """
viz.balance_plot(samples, save_path=fig_dir / "fig_data_balance.png");
"""),
    ("md", "## One Zoom-then-Diagnose dialogue and its crop"),
    ("code", """
dialogue = D.load_dialogues(data_dir, "train")[0]
print(W.messages_text(dialogue["messages"]))
crop_path = dialogue["messages"][2]["content"][0]["image"]
display(Image.open(data_dir / crop_path))
"""),
    ("md", """
## Real images: BUS-BRA as an extra test split

BUS-BRA has one reader, so its confidence label is a stated **proxy**: c=1 when the BI-RADS reading agrees with
the biopsy, c=0 otherwise; the attribute is the margin, mapped from the pathology (also a proxy). Bad records
are reported, never silently dropped; the good ones are kept.
"""),
    ("code", """
real = {}
if real_data_dir and Path(real_data_dir).exists():
    real_samples, report = D.import_bus_bra(real_data_dir, strict=False, limit=prof.n_real_test)
    D.export_samples(real_samples, real_data_dir, data_dir, "test_busbra", prof)
    real = dict(n=len(real_samples), c0_rate=sum(s.c == 0 for s in real_samples) / max(1, len(real_samples)),
                bad_records=len(report.problems), skipped_by_design=len(report.notes))
    print(report.summary())
    display(pd.DataFrame([real]))
else:
    print("no real data folder given or found; skipped")
"""),
    ("md", "## Browse the samples"),
    ("code", """
all_samples = [s for v in samples.values() for s in v]
W.sample_browser(all_samples, data_dir, prof.crop_pixels)
"""),
    ("code", """
write_metrics(run_dir, NOTEBOOK, dict(
    profile=prof.name, seed=seed,  # wall-clock times live in phases.json, so metrics compare across runs
    splits={k: dict(n=len(v), c0_rate=sum(s.c == 0 for s in v) / max(1, len(v))) for k, v in samples.items()},
    real=real))
"""),
]

NB02 = [
    ("md", """
# 02 · Zoom-then-Diagnose SFT and greedy evaluation

Paper §2.2 and the Acc/mIoU half of §3.1. The model learns the two-turn format:

1. **turn 1** — a search rationale in `<think>` and `<tool_call>{"bbox_2d":[x1,y1,x2,y2]}</tool_call>` in
   model-input pixels;
2. the **crop tool** runs (a deterministic crop of the original image at that box) and the crop comes back
   as a new user image turn;
3. **turn 2** — a diagnostic rationale whose tone follows the sonographer confidence and
   `<answer>{"echo": "Hypoechoic"}</answer>`.

Loss is on the assistant tokens of both turns, with both images in context. The paper trains LoRA (r=32,
language model + merger, vision tower frozen) on the pretrained Qwen2.5-VL-7B. The offline tiny model
starts from random weights, so it first gets a from-scratch stage that trains every weight, then the
paper's LoRA stage. The from-scratch stage can open with a short **vision warm-up** (profile field
`sft_warmup_steps`; 10 steps in smoke, off in cpu, where it did not raise accuracy): one image and the
question, answered with the answer tag only (the crop of the true box for the zoom model, the full image
for the single-turn one), cheap ~50-token steps before the ~215-token dialogues. A **single-turn** model (diagnose without zooming) is trained on the same budget for
the "no zoom" row.
"""),
    ("params", """
profile = "smoke"          # smoke | cpu | paper
run_dir = "../runs/smoke"  # the runner passes an absolute path
seed = 0
train_single_turn = True   # also train the no-zoom baseline
"""),
    ("code", COMMON_IMPORTS.replace("{name}", "02_sft_zoom_then_diagnose") + """
from zoomdx_lib.sft import run_sft
from zoomdx_lib import evaluate as E, viz
"""),
    ("md", "## Train: from-scratch stage (tiny model only), then LoRA as in the paper"),
    ("code", """
t0 = time.perf_counter()
zoom_sft = run_sft(prof, run_dir, mode="zoom")
record_phase(run_dir, NOTEBOOK, "sft_zoom_train", time.perf_counter() - t0)
print(f"zoom SFT: {zoom_sft['n_examples']} dialogues, {zoom_sft['seconds']:.0f} s")
if train_single_turn:
    t0 = time.perf_counter()
    single_sft = run_sft(prof, run_dir, mode="single")
    record_phase(run_dir, NOTEBOOK, "sft_single_train", time.perf_counter() - t0)
    print(f"single-turn SFT: {single_sft['seconds']:.0f} s")
"""),
    ("code", """
stages = [("warm-up", "history_warmup"), ("full", "history_full"), ("LoRA", "history_lora")]
curves = {f"zoom · {label}": zoom_sft[key] for label, key in stages}
if train_single_turn:
    curves.update({f"single · {label}": single_sft[key] for label, key in stages})
viz.loss_curve({k: v for k, v in curves.items() if v}, save_path=fig_dir / "sft_loss.png");
"""),
    ("md", """
## Greedy evaluation on the test splits

Acc is on consensus (c=1) samples; mIoU compares the predicted box (after the tool's clamping) with the true
box, on c=1 samples and on all. Tool-call and answer validity count malformed outputs: they score zero and
are reported, never dropped. Generations are cached in `run_dir/generations/`.
"""),
    ("code", """
datasets = {name: E.load_items(data_dir, name) for name in E.test_splits(data_dir)}
methods = [E.Method("zoom_sft", "zoom", zoom_sft["base"], zoom_sft["adapter"])]
if train_single_turn:
    methods.append(E.Method("single_turn_sft", "single", single_sft["base"], single_sft["adapter"]))
t0 = time.perf_counter()
results = E.evaluate_methods(methods, datasets, prof, run_dir / "generations", modes=("greedy",), seeds=(seed,))
record_phase(run_dir, NOTEBOOK, "greedy_eval", time.perf_counter() - t0)
table = pd.DataFrame(E.greedy_table(results, [m.name for m in methods], list(datasets), seed, prof.bootstrap_samples))
cols = ["method", "dataset", "n_c1", "acc", "acc_low", "acc_high", "miou_c1", "miou_all", "tool_call_valid", "answer_valid"]
display(table[cols].round(3))
"""),
    ("code", """
first = next(iter(datasets))
recs = results[("zoom_sft", first, "greedy", seed)]
images = {s.id: img for s, img in datasets[first]}
viz.prediction_panels(recs, images, prof.crop_pixels, n=6, save_path=fig_dir / "sft_predictions.png");
"""),
    ("code", """
write_metrics(run_dir, NOTEBOOK, dict(
    profile=prof.name, seed=seed,
    final_loss_zoom=(zoom_sft["history_lora"] or zoom_sft["history_full"])[-1]["loss"],
    greedy=table.to_dict(orient="records"),
    models={m.name: dict(base=run_path(run_dir, m.base), adapter=run_path(run_dir, m.adapter), kind=m.kind)
            for m in methods}))
"""),
]


NB03 = [
    ("md", """
# 03 · GRPO with the uncertainty-alignment reward

Paper §2.3 and §3.3. From the SFT adapter of notebook 02, each GRPO step samples G=8 Zoom-then-Diagnose
rollouts per prompt at T=0.7 (the crop tool runs between the turns), scores them, and updates the LoRA
weights with a clipped policy-gradient loss on the model's own tokens of both turns.

Rewards (Eq. 3): λ_loc·IoU + 1[c=1]·λ_acc·acc + λ_fmt·format + λ_align·R_group, with 0.1 / 0.3 / 0.1 / 0.5 and
R_group = 1[κ≥δ]·ξ on consensus cases and 1[κ<δ] on ambiguous ones (δ=0.75).

**The cancellation.** R_group is one number per group, so under the paper's group-normalised advantage
(R_i − mean)/std it cancels exactly (`tests/test_rewards.py` proves it). Three estimators are offered:
`group` (the paper as written: the group term never reaches the gradient), `batch` (baseline and scale over
the whole batch), and `credit` (per-rollout leave-one-out credit R_group(T) − R_group(T∖τ_i), added before
group normalisation). This notebook trains the accuracy-only ablation and the uncertainty-aligned variant
with the chosen estimator, plus the paper-literal `group` row.
"""),
    ("params", """
profile = "smoke"
run_dir = "../runs/smoke"
seed = 0
estimator = "credit"        # group | batch | credit
also_paper_group = None     # also train the paper-literal `group` estimator row (None: the profile's choice)
grpo_steps = None           # None: the profile's number of steps
"""),
    ("code", COMMON_IMPORTS.replace("{name}", "03_grpo_uncertainty_alignment") + """
from zoomdx_lib.grpo import run_grpo, log_end_values, RESULT_KEYS
from zoomdx_lib.pipeline import read_metrics, resolve_run_path, run_path
from zoomdx_lib import evaluate as E, viz
sft = {k: resolve_run_path(run_dir, v) for k, v in
       read_metrics(run_dir, "02_sft_zoom_then_diagnose")["models"]["zoom_sft"].items()}
print("starting from", sft["adapter"])
"""),
    ("code", """
variants = [("accuracy_only", "group"), ("uncertainty", estimator)]
if also_paper_group is None:
    also_paper_group = prof.grpo_paper_group_row
if also_paper_group and estimator != "group":
    variants.append(("uncertainty", "group"))
runs = {}
for variant, est in variants:
    t0 = time.perf_counter()
    r = run_grpo(prof, run_dir, variant, est, sft["base"], sft["adapter"], steps=grpo_steps)
    runs[r["name"]] = r
    record_phase(run_dir, NOTEBOOK, f"{r['name']}_generation", r["time_generation_s"])
    record_phase(run_dir, NOTEBOOK, f"{r['name']}_update", r["time_update_s"])
    print(f"{r['name']}: {len(r['log'])} steps, {r['seconds']:.0f} s "
          f"(generation {r['time_generation_s']:.0f} s, update {r['time_update_s']:.0f} s)")
"""),
    ("md", "## Training curves: reward components, κ by c, the share of groups with no signal"),
    ("code", """
viz.grpo_curves({k: v["log"] for k, v in runs.items()}, save_path=fig_dir / "grpo_curves.png");
"""),
    ("code", """
end_values = {name: log_end_values(r["log"], last=5, keys=RESULT_KEYS) for name, r in runs.items()}
display(pd.DataFrame(end_values).T.round(3))
"""),
    ("md", "## Greedy Acc / mIoU after each RL variant, next to SFT"),
    ("code", """
datasets = {name: E.load_items(data_dir, name) for name in E.test_splits(data_dir)}
methods = [E.Method("zoom_sft", "zoom", sft["base"], sft["adapter"])]
methods += [E.Method(name, "zoom", r["base"], r["adapter"]) for name, r in runs.items()]
t0 = time.perf_counter()
results = E.evaluate_methods(methods, datasets, prof, run_dir / "generations", modes=("greedy",), seeds=(seed,))
record_phase(run_dir, NOTEBOOK, "greedy_eval", time.perf_counter() - t0)
table = pd.DataFrame(E.greedy_table(results, [m.name for m in methods], list(datasets), seed, prof.bootstrap_samples))
display(table[["method", "dataset", "acc", "acc_low", "acc_high", "miou_c1", "tool_call_valid", "answer_valid"]].round(3))
"""),
    ("code", """
write_metrics(run_dir, NOTEBOOK, dict(
    profile=prof.name, seed=seed, estimator=estimator, end_values=end_values, greedy=table.to_dict(orient="records"),
    models={name: dict(base=run_path(run_dir, r["base"]), adapter=run_path(run_dir, r["adapter"]), kind="zoom")
            for name, r in runs.items()}))
"""),
]

NB04 = [
    ("md", """
# 04 · Calibration analysis: the paper's tables and figures

Paper §3.1–3.3. Every method is evaluated on every test split from real generations: greedy for Acc and mIoU,
and 8 rollouts at T=0.7 for the consensus answer and its confidence ĉ = κ (Eq. 1), from which SAcc, Align,
ECE and the Entropy Gap (bits) follow. Each number carries a 95 % bootstrap interval over cases.

Rows: single-turn SFT (no zoom), zoom SFT, oracle crop (the true box is given; an upper bound for the zoom),
accuracy-only RL, uncertainty RL with the paper-literal `group` estimator and with the `credit` estimator.
Any Qwen2.5-VL checkpoint can be added as a row through `extra_checkpoints`.
"""),
    ("params", """
profile = "smoke"
run_dir = "../runs/smoke"
seed = 0
extra_checkpoints = {}      # {"name": "/path/to/Qwen2.5-VL-7B-Instruct"}: zero-shot two-turn rows
paper_tables = "../../shared/paper/paper_tables.json"
"""),
    ("code", COMMON_IMPORTS.replace("{name}", "04_calibration_analysis") + """
from zoomdx_lib.pipeline import read_metrics, resolve_run_path
from zoomdx_lib import evaluate as E, metrics as M, tables as TB, viz
m02, m03 = ({name: {k: resolve_run_path(run_dir, v) for k, v in m.items()}
             for name, m in read_metrics(run_dir, nb)["models"].items()}
            for nb in ("02_sft_zoom_then_diagnose", "03_grpo_uncertainty_alignment"))
methods = []
if "single_turn_sft" in m02:
    methods.append(E.Method("single_turn_sft", "single", **{k: m02["single_turn_sft"][k] for k in ("base", "adapter")}))
methods.append(E.Method("zoom_sft", "zoom", m02["zoom_sft"]["base"], m02["zoom_sft"]["adapter"]))
methods.append(E.Method("oracle_crop", "oracle", m02["zoom_sft"]["base"], m02["zoom_sft"]["adapter"]))
methods += [E.Method(name, "zoom", m["base"], m["adapter"]) for name, m in m03.items()]
methods += [E.Method(name, "zoom", path) for name, path in extra_checkpoints.items()]
print([m.name for m in methods])
"""),
    ("code", """
datasets = {name: E.load_items(data_dir, name) for name in E.test_splits(data_dir)}
t0 = time.perf_counter()
results = E.evaluate_methods(methods, datasets, prof, run_dir / "generations", modes=("greedy", "sample"), seeds=(seed,))
record_phase(run_dir, NOTEBOOK, "evaluation_generation", time.perf_counter() - t0)
names, dsets = [m.name for m in methods], list(datasets)
t0 = time.perf_counter()
T = TB.build_tables(results, names, dsets, seed, prof.bootstrap_samples, prof.hp.delta,
                    ablation_dataset="test_liver" if "test_liver" in dsets else dsets[0],
                    ablation_methods=[n for n in ("zoom_sft", "grpo_accuracy_only", "grpo_uncertainty_group",
                                                  "grpo_uncertainty_credit") if n in names])
record_phase(run_dir, NOTEBOOK, "tables_bootstrap", time.perf_counter() - t0)
tab_dir = run_dir / "tables"
for key, caption in [("table1", "Table 1: Acc (c=1, greedy) and mIoU, % [95% CI]"),
                     ("table2", "Table 2: SAcc, Align (%), ECE, Entropy Gap (bits) from 8 rollouts [95% CI]"),
                     ("ablation", "Ablation (paper Sec. 3.3): SFT vs accuracy-only RL vs uncertainty RL")]:
    TB.write_table(T[key], tab_dir, key, caption)
    display(Markdown(f"**{caption}**"))
    display(T[key])
T["long"].to_csv(tab_dir / "all_numbers_long.csv", index=False)
"""),
    ("md", "### The paper's published numbers beside ours (measured on different data and models)"),
    ("code", """
best = "grpo_uncertainty_credit" if "grpo_uncertainty_credit" in names else names[-1]
side = None
if Path(paper_tables).exists():
    side = TB.paper_side_by_side(paper_tables, T["long"], best)
    TB.write_table(side, tab_dir, "paper_vs_ours", "Paper (Qwen2.5-VL-7B, real data) vs this run (tiny model, synthetic data)")
    display(side)
"""),
    ("md", "## Figures: κ distributions (Fig. 1), reliability, risk–coverage, a qualitative ambiguous case (Fig. 3)"),
    ("code", """
arrays = {d: {m: E.calibration_arrays(results[(m, d, "sample", seed)]) for m in names} for d in dsets}
main = dsets[0]
viz.kappa_distributions(arrays[main], save_path=fig_dir / "fig1_kappa_distributions.png");
"""),
    ("code", """
viz.reliability_diagram(arrays[main], n_bins=10, save_path=fig_dir / "reliability_diagrams.png");
"""),
    ("code", """
viz.risk_coverage_plot(arrays[main], delta=prof.hp.delta, save_path=fig_dir / "risk_coverage.png");
"""),
    ("code", """
images = {s.id: img for s, img in datasets[main]}
case = E.pick_ambiguous_case(results[(best, main, "sample", seed)])
other = next(r for r in results[("grpo_accuracy_only" if "grpo_accuracy_only" in names else "zoom_sft", main, "sample", seed)] if r["id"] == case["id"])
viz.qualitative_case(case, images[case["id"]], prof.crop_pixels, title=f"{best}: ambiguous case {case['id']}",
                     save_path=fig_dir / "fig3_qualitative_best.png");
viz.qualitative_case(other, images[case["id"]], prof.crop_pixels, title=f"accuracy-only RL: same case",
                     save_path=fig_dir / "fig3_qualitative_accuracy_only.png");
"""),
    ("md", "### Report-text scores of the diagnostic rationales (BLEU-1, ROUGE-L against the reference rationale)"),
    ("code", """
text_scores = pd.DataFrame(E.rationale_scores(results, names, dsets, data_dir, seed))
TB.write_table(text_scores.set_index(["method", "dataset"]), tab_dir, "report_text_scores")
display(text_scores.round(3))
"""),
    ("md", "## What the tables say about the paper's claims"),
    ("code", """
claims = TB.paper_claims(T["long"], dsets)
display(pd.DataFrame(claims))
"""),
    ("code", """
write_metrics(run_dir, NOTEBOOK, dict(profile=prof.name, seed=seed, methods=names, datasets=dsets,
                                      numbers=T["long"].to_dict(orient="records"), claims=claims,
                                      text_scores=text_scores.to_dict(orient="records")))
"""),
]

NB05 = [
    ("md", """
# 05 · Rollout browser

Browse the cached generations of notebook 04: choose a dataset, a method and a case; filter by the
sonographer confidence c, by whether the consensus answer is correct, and by κ. Each case shows the image with
the true box (green) and the G predicted boxes, every crop the tool returned, each turn's text, the parsed
answer and every reward component of Eq. 3 computed from that rollout.
"""),
    ("params", """
profile = "smoke"
run_dir = "../runs/smoke"
seed = 0
mode = "sample"     # sample: 8 rollouts at T=0.7; or greedy
"""),
    ("code", COMMON_IMPORTS.replace("{name}", "05_rollout_browser") + """
from zoomdx_lib import evaluate as E, widgets as W
from zoomdx_lib.datasets import load_image, load_split
cached = E.load_cached(run_dir / "generations")
records_by = {(d, m): recs for (m, d, md, s), recs in cached.items() if md == mode and s == seed}
paths = {}
for d in {d for d, _ in records_by}:
    paths[d] = {s.id: data_dir / s.image_path for s in load_split(data_dir, d)}
loader = lambda dataset, case_id: load_image(paths[dataset][case_id])
print(f"{len(records_by)} (dataset, method) pairs cached")
"""),
    ("code", """
browser = W.rollout_browser(records_by, loader, prof.crop_pixels)
browser
"""),
    ("code", """
summary = [dict(dataset=d, method=m, cases=len(r), shown_after_filter=len(W.filter_records(r, c=0)))
           for (d, m), r in sorted(records_by.items())]
display(pd.DataFrame(summary))
write_metrics(run_dir, NOTEBOOK, dict(profile=prof.name, pairs=len(records_by), summary=summary))
"""),
]

NOTEBOOKS = {"01_data_construction.ipynb": NB01, "02_sft_zoom_then_diagnose.ipynb": NB02, "03_grpo_uncertainty_alignment.ipynb": NB03,
             "04_calibration_analysis.ipynb": NB04, "05_rollout_browser.ipynb": NB05}

if __name__ == "__main__":
    import sys
    sys.path.insert(0, str(Path(__file__).parent))
    for name, cells in NOTEBOOKS.items():
        build(cells, NB / name)
        print("wrote", NB / name)
