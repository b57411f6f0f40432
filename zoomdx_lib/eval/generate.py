"""Generations of every method on every test split, cached per (method, dataset, mode, seed).

Greedy generations give Acc (c=1 samples) and mIoU; G=8 sampled rollouts at T=0.7 give the
consensus answer, kappa, SAcc, Align, ECE and the Entropy Gap (:mod:`zoomdx_lib.eval.scores`).
Generations are stored as JSONL records, so re-running a notebook recomputes tables without
generating again; every metric is computed from those records.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..config import Profile
from ..io import atomic_write_json, progress as progress_bar, read_jsonl, write_jsonl
from ..model.load import file_sha256, load_policy
from ..rl.rewards import r_loc, trajectory_format
from ..rl.rollout import HFPolicy, OraclePolicy, oracle_turn1, rollout, single_turn_rollout

MODES = ("greedy", "sample")
KINDS = ("zoom", "single", "oracle")


@dataclass
class Method:
    """A row of the tables. kind: "zoom" (two turns), "single" (no zoom) or "oracle" (true box given).
    base: checkpoint folder; adapter: LoRA folder or None; instruct: a "single" method is asked with
    :data:`~zoomdx_lib.protocol.ONE_TURN_INSTRUCTION` after the question (as it was trained)."""

    name: str
    kind: str
    base: str
    adapter: Optional[str] = None
    instruct: bool = False

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"method {self.name!r}: unknown kind {self.kind!r}; choose one of {KINDS}")


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
    chunks = progress_bar(range(0, len(items), batch_size), progress, desc=f"{method.name} {mode}", leave=False)
    for s in chunks:
        batch = items[s:s + batch_size]
        if method.kind == "single":
            trajs = single_turn_rollout(batch, HFPolicy(model, processor), processor, G, do_sample, temperature,
                                        max_new_tokens[1], rows_per_call=64, instruct=method.instruct)
        else:
            policy = HFPolicy(model, processor)
            if method.kind == "oracle":
                policy = OraclePolicy(model, processor,
                                      [oracle_turn1(sample, img, processor) for sample, img in batch for _ in range(G)])
            trajs = rollout(batch, policy, processor, G, do_sample, temperature, max_new_tokens, crop_pixels,
                            rows_per_call=64)
        records += [_record(sample, group) for (sample, _), group in zip(batch, trajs)]
    return records


def cache_path(cache_dir, method: str, dataset: str, mode: str, seed: int) -> Path:
    """Where the generations of (method, dataset, mode, seed) are cached."""
    return Path(cache_dir) / method / dataset / f"{mode}-seed{seed}.jsonl"


def _weights_identity(folder) -> list:
    """What identifies a checkpoint folder's weights: its checksums.json when it has one, else the SHA-256 of
    each weight file up to 256 MiB in all (adapters, the tiny model), else name, size and mtime (a 7B)."""
    folder = Path(folder)
    if (folder / "checksums.json").exists():
        return [json.loads((folder / "checksums.json").read_text())]
    files = sorted(f for f in folder.glob("*") if f.suffix in (".safetensors", ".bin", ".pt") and f.is_file())
    if sum(f.stat().st_size for f in files) <= 256 * 2 ** 20:
        return [(f.name, file_sha256(f)) for f in files]
    return [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]


def weights_digest(folder) -> str:
    """A short hash of a checkpoint folder's weights (:func:`_weights_identity`): two folders with the same
    digest hold the same weights."""
    return hashlib.sha256(json.dumps(_weights_identity(folder), default=str).encode()).hexdigest()[:16]


def generation_fingerprint(method: Method, mode: str, seed: int, **gen_kwargs) -> str:
    """A hash of everything a cached generation depends on: the method's kind, the weights of its base and
    adapter, the mode, the seed and the generation settings (the batch size only groups the work)."""
    settings = {k: v for k, v in gen_kwargs.items() if k not in ("batch_size", "progress")}
    key = dict(kind=method.kind, mode=mode, seed=seed, settings=settings,
               **({"instruct": True} if method.instruct else {}),   # older caches stay valid
               base=_weights_identity(method.base) if Path(method.base).is_dir() else str(method.base),
               adapter=_weights_identity(method.adapter) if method.adapter else None)
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def cached_records(cache_dir, method: Method, dataset: str, items, mode: str, seed: int, model_loader,
                   **gen_kwargs) -> list[dict]:
    """Records from the cache when it holds exactly these sample ids generated by these weights with these
    settings (:func:`generation_fingerprint`, kept beside the records), else generate and store them: a
    retrained adapter or a changed setting never reuses stale generations. `model_loader()` returns
    (model, processor) and is called only on a cache miss."""
    path = cache_path(cache_dir, method.name, dataset, mode, seed)
    meta = path.with_suffix(".meta.json")
    ids = [s.id for s, _ in items]
    fingerprint = generation_fingerprint(method, mode, seed, **gen_kwargs)
    if path.exists() and meta.exists() and json.loads(meta.read_text()).get("fingerprint") == fingerprint:
        recs = read_jsonl(path)
        if [r["id"] for r in recs] == ids:
            return recs
    model, processor = model_loader()
    recs = generate_records(method, model, processor, items, mode, seed=seed, **gen_kwargs)
    write_jsonl(path, recs)
    atomic_write_json(meta, dict(fingerprint=fingerprint, method=method.name, base=str(method.base),
                                 adapter=method.adapter and str(method.adapter)))
    return recs


def evaluate_methods(methods: Sequence[Method], datasets: dict, profile: Profile, cache_dir, modes=("greedy",),
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
                loaded["m"] = load_policy(method.base, method.adapter, profile.device, **profile.model.pixel_bounds)
            return loaded["m"]

        for name, items in datasets.items():
            for mode in modes:
                for seed in seeds:
                    out[(method.name, name, mode, seed)] = cached_records(
                        cache_dir, method, name, items, mode, seed, loader, group_size=profile.eval.rollouts,
                        temperature=profile.hp.temperature, max_new_tokens=profile.rollout.max_new_tokens,
                        crop_pixels=profile.rollout.crop_pixels, batch_size=profile.eval.batch_size,
                        progress=progress)
        loaded.clear()
    return out


def load_cached(cache_dir) -> dict:
    """Every cached generation file under `cache_dir`: {(method, dataset, mode, seed): records}."""
    out = {}
    for path in sorted(Path(cache_dir).glob("*/*/*-seed*.jsonl")):
        mode, seed = path.stem.rsplit("-seed", 1)
        out[(path.parent.parent.name, path.parent.name, mode, int(seed))] = read_jsonl(path)
    return out


