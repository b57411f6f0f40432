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
from zoomdx_lib.pipeline import write_metrics, record_phase
prof = get_profile(profile, seed=seed)
run_dir = Path(run_dir).resolve()
data_dir = run_dir / "data"
fig_dir = run_dir / "figures"
fig_dir.mkdir(parents=True, exist_ok=True)
NOTEBOOK = "{name}"
print(f"profile={prof.name}  run_dir={run_dir}")
"""

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
paper's LoRA stage. A **single-turn** model (diagnose without zooming) is trained on the same budget for
the "no zoom" row.
"""),
    ("params", """
profile = "smoke"          # smoke | cpu | paper
run_dir = "../runs/smoke"  # the runner passes an absolute path
seed = 0
train_single_turn = True   # also train the no-zoom baseline
"""),
    ("code", COMMON_IMPORTS.format(name="02_sft_zoom_then_diagnose") + """
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
curves = {"zoom · full": zoom_sft["history_full"], "zoom · LoRA": zoom_sft["history_lora"]}
if train_single_turn:
    curves.update({"single · full": single_sft["history_full"], "single · LoRA": single_sft["history_lora"]})
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
    sft_seconds=zoom_sft["seconds"], single_turn_sft_seconds=single_sft["seconds"] if train_single_turn else None,
    final_loss_zoom=(zoom_sft["history_lora"] or zoom_sft["history_full"])[-1]["loss"],
    greedy=table.to_dict(orient="records"),
    models={m.name: dict(base=m.base, adapter=m.adapter, kind=m.kind) for m in methods}))
"""),
]

NOTEBOOKS = {"02_sft_zoom_then_diagnose.ipynb": NB02}

if __name__ == "__main__":
    import sys
    sys.path.insert(0, str(Path(__file__).parent))
    for name, cells in NOTEBOOKS.items():
        build(cells, NB / name)
        print("wrote", NB / name)
