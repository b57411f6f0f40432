"""Evaluate methods on test splits from real generations, cached per (method, dataset, mode, seed).

Greedy generations give Acc (c=1 samples) and mIoU; G=8 sampled rollouts at T=0.7 give the
consensus answer, kappa, SAcc, Align, ECE and the Entropy Gap. Generations are stored as JSONL
records, so re-running a notebook recomputes tables without generating again; every metric is
computed from those records by the functions here (and tests recompute them the same way).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from . import metrics as M
from .checkpoints import atomic_write_text
from .geometry import box_to_model, model_input_size, processor_pixel_bounds
from .grpo import trajectory_format
from .rewards import r_loc
from .rollout import HFPolicy, rollout, single_turn_rollout
from .zoom import format_tool_call

MODES = ("greedy", "sample")


@dataclass
class Method:
    """A row of the tables. kind: "zoom" (two turns), "single" (no zoom) or "oracle" (true box given).
    base: checkpoint folder or hub id; adapter: LoRA folder or None."""

    name: str
    kind: str
    base: str
    adapter: Optional[str] = None


def load_policy(method: Method, device: str = "cpu", merge: bool = True):
    """(model, processor) for a method: the base checkpoint with its LoRA adapter, if any, in eval mode.

    merge=True folds the adapter into the base weights (`merge_and_unload`): the same function,
    without the extra low-rank matmuls, scalings and additions of every adapted layer on each
    decoding step (1.3x more trajectories/s for the tiny cpu model in an 8-rollout evaluation batch).
    """
    from .models import load_model_and_processor

    model, processor = load_model_and_processor(method.base, device=device)
    if method.adapter:
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, method.adapter).to(device)
        if merge:
            model = model.merge_and_unload()
        model.eval()
    return model, processor


class OraclePolicy:
    """Turn 1 is the formatted true-box tool call of each row's sample; turn 2 comes from the model."""

    def __init__(self, model, processor, turn1_texts: Sequence[str]):
        self.hf = HFPolicy(model, processor)
        self.processor, self.turn1, self._row = processor, list(turn1_texts), 0

    def __call__(self, inputs, turn, max_new_tokens, do_sample, temperature):
        if turn == 2:
            return self.hf(inputs, turn, max_new_tokens, do_sample, temperature)
        n = inputs["input_ids"].shape[0]
        texts = self.turn1[self._row:self._row + n]
        self._row += n
        return [self.processor.tokenizer(t + "<|im_end|>", add_special_tokens=False)["input_ids"] for t in texts]


def _record(sample, trajs) -> dict:
    return dict(id=sample.id, c=sample.c, label=sample.label, box=list(sample.box), attribute=sample.attribute,
                rollouts=[dict(turn1=t.turn1_text, turn2=t.turn2_text, box=list(t.box) if t.box else None,
                               tool_error=t.tool.error, answer=t.label,
                               answer_error=None if t.answer is None else t.answer.error,
                               fmt=trajectory_format(t) if t.turn2_text is not None else 0.0,
                               iou=r_loc(t.box, sample.box)) for t in trajs])


def generate_records(method: Method, model, processor, items, mode: str, group_size: int, temperature: float,
                     max_new_tokens: tuple, crop_pixels: int, seed: int, batch_size: int = 16,
                     progress: bool = True) -> list[dict]:
    """Generate for every (sample, image) in `items` and return one record per sample."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {MODES}")
    G = 1 if mode == "greedy" else group_size
    do_sample = mode == "sample"
    torch.manual_seed(seed)
    records = []
    chunks = range(0, len(items), batch_size)
    try:
        from tqdm.auto import tqdm
        chunks = tqdm(chunks, desc=f"{method.name} {mode}", leave=False) if progress else chunks
    except ImportError:  # pragma: no cover
        pass
    lo, hi = processor_pixel_bounds(processor)
    for s in chunks:
        batch = items[s:s + batch_size]
        if method.kind == "single":
            trajs = single_turn_rollout(batch, HFPolicy(model, processor), processor, G, do_sample, temperature,
                                        max_new_tokens[1], rows_per_call=64)
        else:
            policy = HFPolicy(model, processor)
            if method.kind == "oracle":
                texts = []
                for sample, img in batch:
                    msize = model_input_size(img.width, img.height, lo, hi)
                    call = "<think>Focus on the lesion.</think>\n" + format_tool_call(
                        box_to_model(sample.box, img.size, msize))
                    texts += [call] * G
                policy = OraclePolicy(model, processor, texts)
            trajs = rollout(batch, policy, processor, G, do_sample, temperature, max_new_tokens, crop_pixels,
                            rows_per_call=64)
        records += [_record(sample, group) for (sample, _), group in zip(batch, trajs)]
    return records


def cache_path(cache_dir, method: str, dataset: str, mode: str, seed: int) -> Path:
    return Path(cache_dir) / method / dataset / f"{mode}-seed{seed}.jsonl"


def cached_records(cache_dir, method: Method, dataset: str, items, mode: str, seed: int, model_loader,
                   **gen_kwargs) -> list[dict]:
    """Records from the cache when it holds exactly these sample ids, else generate and store them.
    `model_loader()` returns (model, processor) and is called only on a cache miss."""
    path = cache_path(cache_dir, method.name, dataset, mode, seed)
    ids = [s.id for s, _ in items]
    if path.exists():
        recs = [json.loads(line) for line in path.read_text().splitlines()]
        if [r["id"] for r in recs] == ids:
            return recs
    model, processor = model_loader()
    recs = generate_records(method, model, processor, items, mode, seed=seed, **gen_kwargs)
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in recs))
    return recs


# ------------------------------------------------------------------ metrics from records

def greedy_metrics(records: Sequence[dict]) -> dict:
    """Acc on c=1, mIoU on c=1 and on all, tool-call and answer validity (all 0-1), from greedy records."""
    first = [r["rollouts"][0] for r in records]
    preds = [f["answer"] for f in first]
    labels = [r["label"] for r in records]
    c1 = np.array([r["c"] == 1 for r in records])
    ious = np.array([f["iou"] for f in first])
    if first and all(f["tool_error"] == "single_turn" for f in first):
        ious = np.full(len(first), np.nan)  # no box: mIoU is not defined for the no-zoom baseline
    return dict(n=len(records), n_c1=int(c1.sum()), acc=M.accuracy(preds, labels, mask=c1),
                miou_c1=float(ious[c1].mean()) if c1.any() else float("nan"),  # nan stays nan
                miou_all=float(ious.mean()) if len(ious) else float("nan"),
                tool_call_valid=float(np.mean([f["tool_error"] is None for f in first])),
                answer_valid=float(np.mean([f["answer"] is not None for f in first])),
                format_ok=float(np.mean([f["fmt"] for f in first])))


def calibration_arrays(records: Sequence[dict]) -> dict:
    """Per-case arrays from sampled records: answers (G per case), modes, kappas, correct, c."""
    answers = [[ro["answer"] for ro in r["rollouts"]] for r in records]
    modes, kappas = M.consensus(answers)
    labels = [r["label"] for r in records]
    correct = np.array([m is not None and m == y for m, y in zip(modes, labels)], dtype=float)
    return dict(answers=answers, modes=modes, kappas=np.asarray(kappas, float), labels=labels, correct=correct,
                c=np.array([r["c"] for r in records]))


def calibration_metrics(records: Sequence[dict], delta: float = 0.75) -> dict:
    """SAcc (and how many cases have kappa >= delta), Align, ECE (10 and 15 bins) and the Entropy Gap (bits).

    ECE is computed on all cases (c=0 and c=1): kappa is the model's confidence in its consensus
    answer and the label y exists for both, so calibration is defined on every case.
    """
    a = calibration_arrays(records)
    sacc, n_sel = M.selective_accuracy(a["modes"], a["kappas"], a["labels"], delta)
    return dict(n=len(records), sacc=sacc, n_selected=int(n_sel), align=M.alignment(a["kappas"], a["c"], delta),
                ece10=M.ece(a["kappas"], a["correct"], 10), ece15=M.ece(a["kappas"], a["correct"], 15),
                gap=M.entropy_gap(a["answers"], a["c"], base=2),
                mean_kappa_c1=float(a["kappas"][a["c"] == 1].mean()) if (a["c"] == 1).any() else float("nan"),
                mean_kappa_c0=float(a["kappas"][a["c"] == 0].mean()) if (a["c"] == 0).any() else float("nan"))


def _bootstrap_keys(metrics_fn, records, keys, n_boot: int, seed: int, alpha: float = 0.05) -> dict:
    """Percentile bootstrap over cases of several metrics from one dict-valued `metrics_fn(records)`.

    Each resample is evaluated once for all keys; indices and quantiles follow `metrics.bootstrap_ci`
    (same seed -> same resamples), so the intervals equal calling it once per key.
    """
    point = metrics_fn(records)
    n = len(records)
    if n == 0:
        return {k: (float(point[k]), np.nan, np.nan) for k in keys}
    rng = np.random.default_rng(seed)
    reps = {k: np.empty(n_boot) for k in keys}
    for b in range(n_boot):
        idx = rng.integers(0, n, size=n)
        m = metrics_fn([records[i] for i in idx])
        for k in keys:
            reps[k][b] = float(m[k])
    out = {}
    for k in keys:
        r = reps[k][np.isfinite(reps[k])]
        lo, hi = np.quantile(r, [alpha / 2, 1 - alpha / 2]) if r.size else (np.nan, np.nan)
        out[k] = (float(point[k]), float(lo), float(hi))
    return out


def bootstrap_greedy(records, n_boot: int = 1000, seed: int = 0) -> dict:
    """95 % bootstrap intervals (resampling cases) for Acc and mIoU: {name: (point, low, high)}."""
    return _bootstrap_keys(greedy_metrics, records, ("acc", "miou_c1", "miou_all"), n_boot, seed)


def bootstrap_calibration(records, delta: float = 0.75, n_boot: int = 1000, seed: int = 0) -> dict:
    """95 % bootstrap intervals for SAcc, Align, ECE-10 and Gap: {name: (point, low, high)}."""
    return _bootstrap_keys(lambda recs: calibration_metrics(recs, delta), records, ("sacc", "align", "ece10", "gap"),
                           n_boot, seed)


# ------------------------------------------------------------------ methods x datasets

def load_items(data_dir, split: str, limit: Optional[int] = None) -> list[tuple]:
    """(sample, PIL image) pairs of a split written by notebook 01 (or an imported real split)."""
    from .datasets import load_image, load_split

    samples = load_split(data_dir, split)[:limit] if limit else load_split(data_dir, split)
    return [(s, load_image(Path(data_dir) / s.image_path)) for s in samples]


def test_splits(data_dir) -> list[str]:
    """Names of the test splits in a data folder, in-domain first, as listed in splits.json."""
    splits = json.loads((Path(data_dir) / "splits.json").read_text())["splits"]
    return [name for name in splits if name.startswith("test_")]


def evaluate_methods(methods: Sequence[Method], datasets: dict, profile, cache_dir, modes=("greedy",),
                     seeds: Sequence[int] = (0,), progress: bool = True) -> dict:
    """Records for every (method, dataset, mode, seed), from the cache or freshly generated.

    datasets: {name: [(sample, image)]}. Each method's model is loaded at most once, and only
    when some of its generations are missing from the cache. Returns {(method, dataset, mode, seed): records}.
    """
    out = {}
    for method in methods:
        loaded = {}

        def loader(method=method, loaded=loaded):
            if "m" not in loaded:
                loaded["m"] = load_policy(method, profile.device)
            return loaded["m"]

        for name, items in datasets.items():
            for mode in modes:
                for seed in seeds:
                    out[(method.name, name, mode, seed)] = cached_records(
                        cache_dir, method, name, items, mode, seed, loader, group_size=profile.eval_rollouts,
                        temperature=profile.hp.temperature,
                        max_new_tokens=(profile.max_new_tokens_turn1, profile.max_new_tokens_turn2),
                        crop_pixels=profile.crop_pixels, batch_size=profile.eval_batch_size, progress=progress)
        loaded.clear()
    return out


def greedy_table(results: dict, methods: Sequence[str], datasets: Sequence[str], seed: int = 0,
                 n_boot: int = 1000) -> list[dict]:
    """Rows {method, dataset, acc, acc_low, acc_high, miou_c1, ..., tool_call_valid, answer_valid} (0-1)."""
    rows = []
    for m in methods:
        for d in datasets:
            recs = results.get((m, d, "greedy", seed))
            if recs is None:
                continue
            row = dict(method=m, dataset=d, **greedy_metrics(recs))
            for k, (p, lo, hi) in bootstrap_greedy(recs, n_boot, seed).items():
                row[f"{k}_low"], row[f"{k}_high"] = lo, hi
            rows.append(row)
    return rows


def load_cached(cache_dir) -> dict:
    """Every cached generation file under `cache_dir`: {(method, dataset, mode, seed): records}."""
    out = {}
    for path in sorted(Path(cache_dir).glob("*/*/*-seed*.jsonl")):
        mode, seed = path.stem.rsplit("-seed", 1)
        out[(path.parent.parent.name, path.parent.name, mode, int(seed))] = [
            json.loads(line) for line in path.read_text().splitlines()]
    return out


def pick_ambiguous_case(records: Sequence[dict]) -> dict:
    """The c=0 case whose rollouts give the most distinct answers (the first record if no c=0 case)."""
    amb = [r for r in records if r["c"] == 0]
    return max(amb, key=lambda r: len({ro["answer"] for ro in r["rollouts"]})) if amb else records[0]


def _diagnostic_think(text: Optional[str]) -> str:
    import re
    m = re.search(r"<think>(.*?)</think>", text or "", re.S)
    return m.group(1).strip() if m else ""


def rationale_scores(results: dict, methods: Sequence[str], datasets: Sequence[str], data_dir, seed: int = 0) -> list:
    """BLEU-1 and ROUGE-L (0-1) of each method's greedy diagnostic rationale (the turn-2 `<think>`, or the
    single turn) against the reference rationale of the dataset's dialogue, averaged over cases."""
    from .datasets import load_dialogues

    rows = []
    for d in datasets:
        try:
            refs = {r["id"]: _diagnostic_think(r["messages"][-1]["content"][0]["text"])
                    for r in load_dialogues(data_dir, d)}
        except FileNotFoundError:
            continue
        for m in methods:
            recs = results.get((m, d, "greedy", seed))
            if not recs:
                continue
            pairs = [(_diagnostic_think(r["rollouts"][0]["turn2"] or r["rollouts"][0]["turn1"]), refs.get(r["id"], ""))
                     for r in recs]
            rows.append(dict(method=m, dataset=d, bleu1=float(np.mean([M.bleu1(c, ref) for c, ref in pairs])),
                             rouge_l=float(np.mean([M.rouge_l(c, ref) for c, ref in pairs])), n=len(pairs)))
    return rows
