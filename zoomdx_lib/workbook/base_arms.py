"""Base ablation arms continued from the shipped base, each trained twice, paired on fresh cases and BUS-BRA fold 3.

    python -m zoomdx_lib.workbook.base_arms --out runs/base_arms            # every arm, two trainings each
    python -m zoomdx_lib.workbook.base_arms --arms continue,single_turn --steps 400 --trainings 21

A full base costs 44 + 32 min of steps on 2 cores, so arms that ask "does this data change what the base
reads?" are run as a short third stage from the shipped base (`zoomdx_lib/base`, fresh auxiliary heads):
the shipped stage 2's recipe (half the cases with SFT's rationales, the ``mask`` and ``pos`` losses) at a
lower learning rate, with one change per arm (:data:`ARMS`). ``continue`` is the control: the same steps
with nothing changed, so an arm's difference from it is the change, not the extra steps.

Every model (the shipped base too) is evaluated on the same cases: fresh synthetic liver, breast and the
zero-shot thyroid (:data:`EVAL_SEEDS`, seeds no run used) and, when ``$ZOOMDX_DATA`` holds BUS-BRA
(``--real``), every case of its test fold 3. Per case: the box of the model's own greedy turn 1, the
answer from the crop of the true box, and the answer in one turn from the full view (the no-zoom
baseline's format). Arm minus control is paired by case and by training seed (training ``s`` of the arm
against training ``s`` of the control), so each training gives its own interval; an arm decides the
recipe only if both trainings agree.

Resumable: trainings resume from their checkpoints, and each evaluation is cached in the arm's folder.
Writes ``arms.json`` (every number) and ``arms.md`` (the tables) in ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from ..config import SHIPPED_BASE, get_profile
from ..data.sources import load_cases
from ..eval.grounding import grounding_report, paired_grounding_difference, summarise
from ..io import atomic_write_json, atomic_write_text, progress as progress_bar
from ..model.load import load_policy
from ..train.loop import read_log
from . import base as base_cli

# One change per arm against the control; the real-data arm needs BUS-BRA under $ZOOMDX_DATA.
ARMS: dict[str, list[str]] = {
    "continue": [],
    "single_turn": ["--single-turn", "0.3"],
    "real": ["--real-data", "bus_bra:bus_bra", "--real-share", "0.3"],
    "context": ["--crop-context", "0.25"],
    "bmode": ["--synth-style", "bus_bra"],
}
# How an arm's models are evaluated when it changes the tool itself (its crop has context; the control's none).
ARM_EVAL: dict[str, dict] = {"context": dict(crop_context=0.25)}
STAGE3 = ["--lr", "3e-4", "--warmup", "20", "--rationales", "0.5", "--aux", "mask,pos"]
EVAL_SEEDS = {"liver": 7701, "breast": 7702, "thyroid": 7703}
REAL_SET = ("bus_bra_f3", "bus_bra:bus_bra", [3])
METRICS = ("miou", "acc", "acc_single")


def eval_sets(n: int, real: bool) -> dict:
    """{set name: (data SPEC, n or None, seed, folds)} of the comparison."""
    sets = {organ: (organ, n, seed, None) for organ, seed in EVAL_SEEDS.items()}
    if real:
        name, spec, folds = REAL_SET
        sets[name] = (spec, None, 0, folds)
    return sets


class EvalCases:
    """The (sample, image) pairs of each evaluation set, drawn or read once and shared by every model."""

    def __init__(self, sets: dict, profile):
        self.sets, self.profile, self._items = sets, profile, {}

    def __call__(self, name: str) -> list:
        if name not in self._items:
            spec, n, seed, folds = self.sets[name]
            self._items[name] = load_cases(spec, n, seed, self.profile.data.image_size, folds)[0]
        return self._items[name]


def evaluate_model(model_dir, cache: Path, cases: EvalCases, profile, progress: bool = True, **report_kw) -> dict:
    """{set: per-case records} of one model, cached in `cache` (JSON) set by set; `report_kw` go to
    :func:`grounding_report` (e.g. ``crop_context``)."""
    done = json.loads(cache.read_text()) if cache.exists() else {}
    todo = [name for name in cases.sets if name not in done]
    if not todo:
        return done
    model, processor = load_policy(str(model_dir), None, device=profile.device, **profile.model.pixel_bounds)
    for name in todo:
        seed = cases.sets[name][2]
        report = grounding_report(model, processor, cases(name), profile.rollout.crop_pixels,
                                  profile.rollout.max_new_tokens, n_boot=200, seed=seed, per_case=True,
                                  progress=progress, single_turn=True, **report_kw)
        done[name] = report["cases"]
        atomic_write_json(cache, done)
    return done


def train_arm(arm: str, seed: int, out: Path, steps: int) -> Path:
    """Train (or resume, or find finished) one training of an arm; returns its exported model folder."""
    run = out / arm / f"s{seed}"
    model = run / "model"
    if not (model / "config.json").exists() or not (run / "done.json").exists():
        t0 = time.perf_counter()
        base_cli.main(["--out", str(run), "--init-from", str(SHIPPED_BASE), "--steps", str(steps), "--seed", str(seed),
                       "--eval-every", str(steps)] + STAGE3 + ARMS[arm])
        atomic_write_json(run / "done.json", dict(arm=arm, seed=seed, steps=steps,
                                                  seconds_last_pass=time.perf_counter() - t0,
                                                  args=STAGE3 + ARMS[arm]))
    return model


def tables(results: dict, n_boot: int = 1000) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per model × set summary, arm − control per training × set with paired intervals) of
    ``results[model_key][set] = cases``; model keys are ``"shipped"`` and ``"ARM/sSEED"``."""
    rows = []
    for key, per_set in results.items():
        for name, cases in per_set.items():
            s = summarise(cases, n_boot)
            rows.append(dict(model=key, set=name, n=s["n"], miou=s["miou"], mean_box=s["mean_box_miou"], acc=s["acc"],
                             acc_single=s["acc_single"], majority=s["majority_acc"],
                             crop_minus_single=s["crop_minus_single"][0]))
    diffs = []
    for key, per_set in results.items():
        if "/" not in key or key.startswith("continue/"):
            continue
        arm, seed = key.split("/")
        control = results.get(f"continue/{seed}")
        if control is None:
            continue
        for name, cases in per_set.items():
            if name not in control:
                continue
            d = paired_grounding_difference(cases, control[name], n_boot)
            diffs.append(dict(arm=arm, training=seed, set=name, n=len(cases),
                              **{f"d_{m}": d[m][0] for m in METRICS},
                              **{f"d_{m}_ci": [round(d[m][1], 3), round(d[m][2], 3)] for m in METRICS}))
    return pd.DataFrame(rows), pd.DataFrame(diffs)


def run(out, arms: Sequence[str], trainings: Sequence[int], steps: int, n: int, real: Optional[bool] = None,
        progress: bool = True) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    real = bool(os.environ.get("ZOOMDX_DATA")) if real is None else real
    profile = get_profile("cpu")
    sets = eval_sets(n, real)
    cases = EvalCases(sets, profile)
    results = {"shipped": evaluate_model(SHIPPED_BASE, out / "shipped_eval.json", cases, profile, progress)}
    seconds = {}
    for seed in trainings:
        for arm in progress_bar(list(arms), progress, desc=f"training {seed}: arms"):
            model = train_arm(arm, seed, out, steps)
            # seconds of training steps, every pass (resumed ones too)
            seconds[f"{arm}/s{seed}"] = sum(r.get("seconds", 0.0) for r in read_log(out / arm / f"s{seed}"))
            results[f"{arm}/s{seed}"] = evaluate_model(model, out / arm / f"s{seed}" / "arm_eval.json", cases, profile,
                                                       progress, **ARM_EVAL.get(arm, {}))
            summary, diffs = tables(results)
            atomic_write_json(out / "arms.json", dict(steps=steps, n=n, sets={k: list(map(str, v)) for k, v in sets.items()},
                                                      stage3=STAGE3, arms={a: ARMS[a] for a in arms},
                                                      train_seconds=seconds, summary=summary.to_dict("records"),
                                                      differences=diffs.to_dict("records")))
            atomic_write_text(out / "arms.md", "## Per model\n\n" + summary.round(3).to_markdown(index=False)
                              + "\n\n## Arm minus control (same training seed, paired by case)\n\n"
                              + (diffs.round(3).to_markdown(index=False) if len(diffs) else "(no pair yet)") + "\n")
    return json.loads((out / "arms.json").read_text())


def main(argv: Optional[list] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m zoomdx_lib.workbook.base_arms", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/base_arms")
    ap.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, from {','.join(ARMS)}")
    ap.add_argument("--trainings", default="21,22", help="training seeds: each arm is trained once per seed")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--n", type=int, default=192, help="fresh synthetic cases per organ")
    ap.add_argument("--real", action=argparse.BooleanOptionalAction, default=None,
                    help="evaluate on BUS-BRA fold 3 (default: when $ZOOMDX_DATA is set)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    arms = [a for a in args.arms.split(",") if a]
    unknown = set(arms) - set(ARMS)
    if unknown:
        ap.error(f"unknown arm(s) {sorted(unknown)}; choose from {sorted(ARMS)}")
    if "continue" not in arms:
        ap.error("the control arm 'continue' is needed: every arm is compared with it")
    out = run(args.out, arms, [int(s) for s in args.trainings.split(",")], args.steps, args.n, args.real,
              not args.no_progress)
    print(json.dumps(dict(train_seconds=out["train_seconds"], pairs=len(out["differences"]))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
