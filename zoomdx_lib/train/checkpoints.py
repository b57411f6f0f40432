"""Atomic, safetensors-only training checkpoints (model or LoRA adapter, optimizer, RNG, step).

A checkpoint is written into a temporary folder and renamed into place, and `latest.json` is
replaced atomically afterwards, so a kill at any moment leaves either the previous complete
checkpoint or the new complete one — never a half-written one that a resume would load.
Nothing here uses pickle: optimizer tensors go to safetensors and scalars to JSON.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import torch
from peft import set_peft_model_state_dict
from safetensors.torch import load_file, save_file

from ..io import atomic_write_json


def _optimizer_tensors(optimizer) -> tuple[dict, dict]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {"param_groups": sd["param_groups"], "state": {}}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars["state"].setdefault(str(pid), {})[k] = v
    return tensors, scalars


def _load_optimizer(optimizer, tensors: dict, scalars: dict) -> None:
    state: dict = {}
    for key, v in tensors.items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    for pid, st in scalars["state"].items():
        state.setdefault(int(pid), {}).update(st)
    optimizer.load_state_dict({"state": state, "param_groups": scalars["param_groups"]})


def save_checkpoint(run_dir, step: int, model, optimizer=None, scheduler=None, extra: Optional[dict] = None,
                    keep: int = 2) -> Path:
    """Save `model` (a peft model saves only its adapter) with optimizer/scheduler/RNG state as
    `run_dir/checkpoint-{step}`, atomically, and point `run_dir/latest.json` at it."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / f"checkpoint-{step:06d}"
    tmp = Path(tempfile.mkdtemp(dir=run_dir, prefix=f".tmp-checkpoint-{step:06d}-"))
    model.save_pretrained(tmp, safe_serialization=True)
    meta = {"step": step, "extra": extra or {}}
    if optimizer is not None:
        tensors, scalars = _optimizer_tensors(optimizer)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        meta["optimizer"] = scalars
    if scheduler is not None:
        meta["scheduler"] = scheduler.state_dict()
    save_file({"torch_rng": torch.get_rng_state()}, str(tmp / "rng.safetensors"))
    (tmp / "trainer_state.json").write_text(json.dumps(meta, default=str))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write_json(run_dir / "latest.json", {"step": step, "path": final.name})
    old = sorted(p for p in run_dir.glob("checkpoint-*") if p != final)
    for p in old[:max(0, len(old) - (keep - 1))]:
        shutil.rmtree(p, ignore_errors=True)
    return final


def latest_checkpoint(run_dir) -> Optional[Path]:
    """The checkpoint `latest.json` names, or None when there is none (leftover temp folders are ignored)."""
    pointer = Path(run_dir) / "latest.json"
    if not pointer.exists():
        return None
    path = Path(run_dir) / json.loads(pointer.read_text())["path"]
    return path if (path / "trainer_state.json").exists() else None


def load_training_state(ckpt: Path, optimizer=None, scheduler=None) -> dict:
    """Restore optimizer, scheduler and torch RNG from a checkpoint folder; returns its meta (with 'step').
    Model/adapter weights are loaded by the caller (`from_pretrained` / `load_adapter_weights`)."""
    meta = json.loads((ckpt / "trainer_state.json").read_text())
    if optimizer is not None and "optimizer" in meta:
        _load_optimizer(optimizer, load_file(str(ckpt / "optimizer.safetensors")), meta["optimizer"])
    if scheduler is not None and "scheduler" in meta:
        scheduler.load_state_dict(meta["scheduler"])
    rng = ckpt / "rng.safetensors"
    if rng.exists():
        torch.set_rng_state(load_file(str(rng))["torch_rng"])
    return meta


def load_adapter_weights(peft_model, folder) -> None:
    """Load adapter weights saved by `save_pretrained` into an existing trainable peft model."""
    set_peft_model_state_dict(peft_model, load_file(str(Path(folder) / "adapter_model.safetensors")))


def load_full_weights(model, folder) -> None:
    """Load a full model saved by `save_pretrained` into `model` (same architecture), through
    `from_pretrained` so the checkpoint's key naming is handled by transformers itself."""
    saved = type(model).from_pretrained(folder, dtype=next(model.parameters()).dtype, use_safetensors=True)
    model.load_state_dict(saved.state_dict(), strict=True)


def restore_weights(model, folder) -> None:
    """Load a checkpoint's weights into `model`: the adapter of a peft model, else the full model."""
    if hasattr(model, "peft_config"):
        load_adapter_weights(model, folder)
    else:
        load_full_weights(model, folder)
