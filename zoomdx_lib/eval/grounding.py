"""Does a checkpoint see? Box quality of its turn 1 and accuracy of its turn 2 from the oracle crop, on fresh cases.

    python -m zoomdx_lib.eval.grounding --organ breast --n 64 --seed 12345 --model runs/cpu/models/sft_zoom_full

generates `n` fresh synthetic cases of `organ` with `seed` (use a seed nobody trained or tuned on),
decodes turn 1 greedily (the model's own box) and, separately, turn 2 greedily from the crop of
the TRUE box (the oracle crop: reading the lesion, with finding it taken out of the question),
and prints one JSON line:

    organ, n, seed, model, miou, miou_ci, mean_box_miou, acc, acc_ci, majority_acc, tool_call_valid,
    answer_valid, seconds

and, with ``--against DIR`` (an ablation: two checkpoints on the same cases), also against_miou,
against_acc, miou_diff and acc_diff: (point, low, high) of model minus against, paired bootstrap.

``mean_box_miou`` is the mIoU of answering every case with the mean of these cases' own true
boxes and ``majority_acc`` the accuracy of answering each attribute's most frequent label among
these cases: constant answers chosen in hindsight, so a model beats them only by looking.
Intervals are 95 % percentile bootstraps over cases.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..config import SHIPPED_BASE, get_profile
from ..data.dialogue import question_for
from ..data.synth import ORGAN_PRESETS, generate_samples
from ..geometry import iou
from ..model.load import load_policy
from ..rl.rollout import HFPolicy, OraclePolicy, oracle_turn1, rollout
from . import metrics as M
from .claims import paired_difference



def fresh_cases(organ: str, n: int, seed: int, size: int) -> list[tuple]:
    """`n` (sample, image) pairs of `organ` from the generator with `seed`, each with its question."""
    items = []
    for sample, image in generate_samples(organ, n, seed=seed, size=size, split="grounding"):
        sample.question = question_for(sample.attribute, f"{seed}:{sample.id}")
        items.append((sample, image.convert("RGB")))
    return items


def grounding_report(model, processor, items, crop_pixels: int, max_new_tokens=(64, 64), n_boot: int = 1000,
                     seed: int = 0, policy=None, read_policy=None, per_case: bool = False) -> dict:
    """Box and answer quality of a (model, processor) on (sample, image) pairs; see the module docstring.

    `policy` (default: greedy `model`) writes turn 1; `read_policy` (default: the true-box call, then
    greedy `model`) gives the oracle-crop answers. Both are rollout policies (:mod:`zoomdx_lib.rl.rollout`).
    `per_case` adds ``cases``: per case its id, the model's box (None when the call was invalid), IoU and answer.
    """
    torch.manual_seed(seed)
    own = rollout(items, policy or HFPolicy(model, processor), processor, 1, False, max_new_tokens=max_new_tokens,
                  crop_pixels=crop_pixels)
    oracle = read_policy or OraclePolicy(model, processor, [oracle_turn1(s, im, processor) for s, im in items])
    read = rollout(items, oracle, processor, 1, False, max_new_tokens=max_new_tokens, crop_pixels=crop_pixels)
    samples = [s for s, _ in items]
    ious = np.array([iou(g[0].box, s.box) if g[0].box is not None else 0.0 for g, s in zip(own, samples)])
    hits = np.array([g[0].label == s.label for g, s in zip(read, samples)], float)
    mean_box = tuple(np.mean([s.box for s in samples], axis=0))
    majority = {a: Counter(s.label for s in samples if s.attribute == a).most_common(1)[0][0]
                for a in {s.attribute for s in samples}}
    ci = M.bootstrap(lambda i: {"miou": float(ious.mean() if i is None else ious[i].mean()),
                                "acc": float(hits.mean() if i is None else hits[i].mean())},
                     len(samples), n_boot, seed=seed)
    report = dict(n=len(samples), miou=ci["miou"][0], miou_ci=list(ci["miou"][1:]),
                mean_box_miou=float(np.mean([iou(mean_box, s.box) for s in samples])),
                acc=ci["acc"][0], acc_ci=list(ci["acc"][1:]),
                majority_acc=float(np.mean([majority[s.attribute] == s.label for s in samples])),
                tool_call_valid=float(np.mean([g[0].tool.ok for g in own])),
                answer_valid=float(np.mean([g[0].label is not None for g in read])))
    if per_case:
        report["cases"] = [dict(id=s.id, box=g[0].box, iou=float(v), answer=r[0].label, hit=bool(h))
                           for s, g, r, v, h in zip(samples, own, read, ious, hits)]
    return report


def paired_grounding_difference(cases: list[dict], against: list[dict], n_boot: int = 1000, seed: int = 0) -> dict:
    """``{"miou": (point, low, high), "acc": (...)}`` of `cases` minus `against` (``cases`` lists of
    :func:`grounding_report` with ``per_case``), matched by id, with one bootstrap draw of cases for both.

    >>> a = [dict(id=i, iou=0.5, hit=True) for i in range(8)]
    >>> b = [dict(id=i, iou=0.25, hit=i < 4) for i in range(8)]
    >>> d = paired_grounding_difference(a, b, n_boot=100)
    >>> d["miou"], d["acc"][0]
    ((0.25, 0.25, 0.25), 0.5)
    """
    def means(cases):
        return {"miou": float(np.mean([c["iou"] for c in cases])), "acc": float(np.mean([c["hit"] for c in cases]))}
    ci = paired_difference(cases, against, means, ("miou", "acc"), n_boot, seed)
    return {k: tuple(float(x) for x in v) for k, v in ci.items()}


def main(argv: Optional[list] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m zoomdx_lib.eval.grounding", description=__doc__.split("\n\n")[0])
    ap.add_argument("--organ", required=True, choices=sorted(ORGAN_PRESETS))
    ap.add_argument("--n", type=int, default=64, help="fresh cases (default 64)")
    ap.add_argument("--seed", type=int, required=True, help="generator seed: one no training or tuning used")
    ap.add_argument("--model", default=None, help="checkpoint folder (default: the base shipped in the package)")
    ap.add_argument("--adapter", default=None, help="optional LoRA adapter folder on top of --model")
    ap.add_argument("--profile", default="cpu", help="profile whose image and crop sizes are used (default cpu)")
    ap.add_argument("--against", default=None,
                    help="a second checkpoint folder: also print the paired difference (model - against) of mIoU "
                         "and accuracy on the same cases, with 95 %% intervals")
    args = ap.parse_args(argv)
    model_dir = Path(args.model) if args.model else SHIPPED_BASE
    for d in [model_dir] + ([Path(args.against)] if args.against else []):
        if not (d / "config.json").exists():
            print(f"no checkpoint at {d}: pass a folder with config.json and safetensors", file=sys.stderr)
            return 2
    prof = get_profile(args.profile)
    t0 = time.perf_counter()
    items = fresh_cases(args.organ, args.n, args.seed, prof.data.image_size)

    def report_of(folder, adapter=None):
        model, processor = load_policy(folder, adapter)
        return grounding_report(model, processor, items, prof.rollout.crop_pixels, prof.rollout.max_new_tokens,
                                seed=args.seed, per_case=args.against is not None)

    report = report_of(model_dir, args.adapter)
    line = dict(organ=args.organ, **report, seed=args.seed, model=str(model_dir))
    if args.against:
        other = report_of(Path(args.against))
        diff = paired_grounding_difference(report["cases"], other["cases"], seed=args.seed)
        line.update(against=args.against, against_miou=other["miou"], against_acc=other["acc"],
                    miou_diff=list(diff["miou"]), acc_diff=list(diff["acc"]))
        del line["cases"]
    line["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
