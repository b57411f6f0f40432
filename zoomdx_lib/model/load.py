"""Load a Qwen2.5-VL checkpoint (the tiny one, the 7B, Lingshu, MedVLM-R1), the paper's LoRA, a policy.

One loader for every checkpoint: the offline tiny model (:mod:`zoomdx_lib.model.build`) is saved
with `save_pretrained` and comes back through the same `load_model_and_processor` as a real 7B
folder, so every code path downstream is the real one. Weights load from safetensors only.
"""
from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Optional

import torch
from peft import LoraConfig, PeftModel
from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

class UnsafeCheckpointError(RuntimeError):
    """Raised when a checkpoint folder holds only pickle weights (.bin/.pt), which are never loaded."""


def check_safetensors_only(path) -> None:
    """Refuse a local checkpoint folder that has pickle weights but no safetensors (pickle can run code)."""
    p = Path(path)
    if not p.is_dir():
        return  # a hub id: from_pretrained(use_safetensors=True) enforces it
    has_safe = bool(glob.glob(str(p / "*.safetensors")))
    pickles = [os.path.basename(f) for pat in ("*.bin", "*.pt", "*.pth", "*.pkl") for f in glob.glob(str(p / pat))]
    if pickles and not has_safe:
        raise UnsafeCheckpointError(
            f"{p}: only pickle weights found ({', '.join(sorted(pickles))}); ZoomDx loads safetensors only. "
            "Convert with `model.save_pretrained(dir, safe_serialization=True)` in a trusted environment.")


def load_model_and_processor(path_or_id, dtype=torch.float32, device: str = "cpu", trust_remote_code: bool = False,
                             attn_implementation: Optional[str] = None, **processor_kwargs):
    """Load a Qwen2.5-VL checkpoint (the tiny one, Qwen2.5-VL-7B, Lingshu, MedVLM-R1: same class).

    safetensors only; `trust_remote_code` stays off unless the caller sets it. `processor_kwargs`
    (e.g. min_pixels/max_pixels) go to `AutoProcessor.from_pretrained`. Returns (model, processor),
    the model in eval mode on `device`.
    """
    check_safetensors_only(path_or_id)
    kwargs = dict(dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code)
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path_or_id, **kwargs).to(device)
    processor = AutoProcessor.from_pretrained(path_or_id, trust_remote_code=trust_remote_code, **processor_kwargs)
    processor.tokenizer.padding_side = "left"
    model.eval()
    return model, processor


# LM linear layers only: the vision blocks use the same MLP names, so a plain name list would hit them too.
LORA_TARGET_REGEX = r".*language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"


def lora_config(rank: int = 32, alpha: int = 64, dropout: float = 0.05):
    """The paper's LoRA: rank r on the language model's linear layers, the vision->language merger
    fully trained (`modules_to_save`), the vision tower frozen."""
    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=LORA_TARGET_REGEX,
                      modules_to_save=["merger"], bias="none")


def parameter_report(model) -> dict:
    """Parameter counts: total, vision tower (blocks+patch embed), merger, language model, trainable."""
    counts = dict(total=0, vision=0, merger=0, language_model=0, trainable=0, trainable_vision_blocks=0)
    for name, p in model.named_parameters():
        n = p.numel()
        counts["total"] += n
        if ".merger." in name:
            counts["merger"] += n
        elif ".visual." in name or name.startswith("visual."):
            counts["vision"] += n
            if p.requires_grad:
                counts["trainable_vision_blocks"] += n
        else:
            counts["language_model"] += n
        if p.requires_grad:
            counts["trainable"] += n
    return counts


def load_policy(base, adapter: Optional[str] = None, device: str = "cpu", merge: bool = True, **processor_kwargs):
    """(model, processor) of a checkpoint with its LoRA adapter, if any, in eval mode.

    merge=True folds the adapter into the base weights (`merge_and_unload`): the same function,
    without the extra low-rank matmuls, scalings and additions of every adapted layer on each
    decoding step (1.3x more trajectories/s for the tiny cpu model in an 8-rollout evaluation batch).
    """
    model, processor = load_model_and_processor(base, device=device, **processor_kwargs)
    if adapter:
        model = PeftModel.from_pretrained(model, adapter).to(device)
        if merge:
            model = model.merge_and_unload()
        model.eval()
    return model, processor
