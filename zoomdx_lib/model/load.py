"""Load a Qwen2.5-VL checkpoint (the tiny one, the 7B, Lingshu, MedVLM-R1), the paper's LoRA, a policy.

One loader for every checkpoint: the offline tiny model (:mod:`zoomdx_lib.model.build`) is saved
with `save_pretrained` and comes back through the same `load_model_and_processor` as a real 7B
folder, so every code path downstream is the real one. Weights load from safetensors only.
"""
from __future__ import annotations

import glob
import hashlib
import importlib.util
import json
import os
from pathlib import Path
from typing import Optional

import torch
from peft import LoraConfig, PeftModel
from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

HOW_TO_GET = ("ZoomDx never downloads. On a machine with internet run e.g. `huggingface-cli download "
              "Qwen/Qwen2.5-VL-7B-Instruct --local-dir Qwen2.5-VL-7B-Instruct` (also "
              "lingshu-medical-mllm/Lingshu-7B, JZPeterPan/MedVLM-R1), then copy the folder here.")


class CheckpointFolderError(FileNotFoundError):
    """A checkpoint path that is not a complete local Qwen2.5-VL folder; the message lists what is missing."""


def missing_checkpoint_files(path) -> list[str]:
    """What a local Qwen2.5-VL folder lacks to be loaded offline: [] when complete.

    Needs config.json; weights as model.safetensors or an index whose every shard is present; a
    tokenizer (tokenizer.json, or vocab.json + merges.txt); an image-processor config
    (processor_config.json or preprocessor_config.json); and a chat template (chat_template.jinja /
    .json, or one inside tokenizer_config.json).
    """
    p = Path(path)
    if not p.is_dir():
        return [f"the folder itself ({p} is not a directory)"]
    missing = [] if (p / "config.json").exists() else ["config.json"]
    index = p / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text()).get("weight_map", {}).values()))
        missing += [f"{s} (named in {index.name})" for s in shards if not (p / s).exists()]
    elif not (p / "model.safetensors").exists():
        missing.append("model.safetensors (or model.safetensors.index.json and its shards)")
    if not ((p / "tokenizer.json").exists() or ((p / "vocab.json").exists() and (p / "merges.txt").exists())):
        missing.append("tokenizer.json (or vocab.json + merges.txt)")
    if not any((p / f).exists() for f in ("processor_config.json", "preprocessor_config.json")):
        missing.append("preprocessor_config.json (or processor_config.json)")
    tok_cfg = p / "tokenizer_config.json"
    if not (any((p / f).exists() for f in ("chat_template.jinja", "chat_template.json"))
            or (tok_cfg.exists() and "chat_template" in json.loads(tok_cfg.read_text()))):
        missing.append("a chat template (chat_template.jinja, chat_template.json or tokenizer_config.json)")
    return missing


def check_checkpoint_folder(path) -> Path:
    """`path` as a Path when it is a complete local checkpoint folder; CheckpointFolderError otherwise."""
    missing = missing_checkpoint_files(path)
    if missing:
        raise CheckpointFolderError(f"{path}: not a complete local checkpoint folder; missing: "
                                    f"{'; '.join(missing)}. {HOW_TO_GET}")
    return Path(path)


def default_attention(device: str) -> Optional[str]:
    """flash-attention 2 on CUDA when installed, else sdpa; None on CPU (transformers' own default, sdpa)."""
    if not str(device).startswith("cuda"):
        return None
    return "flash_attention_2" if importlib.util.find_spec("flash_attn") else "sdpa"


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


CHECKSUMS = "checksums.json"


class ChecksumError(RuntimeError):
    """A checkpoint file whose SHA-256 differs from the folder's checksums.json."""


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_checksums(path) -> dict:
    """Write `path/checksums.json`: the SHA-256 of every other file in the folder. Returns the mapping."""
    path = Path(path)
    sums = {p.name: file_sha256(p) for p in sorted(path.iterdir()) if p.is_file() and p.name != CHECKSUMS}
    (path / CHECKSUMS).write_text(json.dumps(sums, indent=1) + "\n")
    return sums


def verify_checksums(path) -> bool:
    """Check every file `path/checksums.json` lists; False when the folder has none, ChecksumError on a mismatch."""
    path = Path(path)
    listing = path / CHECKSUMS
    if not listing.exists():
        return False
    for name, want in json.loads(listing.read_text()).items():
        if not (path / name).exists():
            raise ChecksumError(f"{path}: {name} is listed in {CHECKSUMS} but missing")
        got = file_sha256(path / name)
        if got != want:
            raise ChecksumError(f"{path}: {name} has SHA-256 {got}, {CHECKSUMS} says {want} "
                                "(a changed or truncated file; restore it, e.g. with `git checkout`)")
    return True


def load_model_and_processor(path, dtype=None, device: str = "cpu", trust_remote_code: bool = False,
                             attn_implementation: Optional[str] = None, gradient_checkpointing: bool = False,
                             **processor_kwargs):
    """Load a local Qwen2.5-VL checkpoint folder (the tiny one, Qwen2.5-VL-7B, Lingshu, MedVLM-R1: same class).

    `path` must be a complete local folder (:func:`check_checkpoint_folder` says what is missing);
    safetensors only; a `checksums.json` in the folder is verified; `trust_remote_code` stays off unless the caller sets it. `dtype` None means
    bf16 on CUDA and fp32 on CPU; `attn_implementation` None means :func:`default_attention`. On
    CUDA the weights load straight onto the device. `gradient_checkpointing` trades compute for
    activation memory in training. `processor_kwargs` (e.g. min_pixels/max_pixels) go to
    `AutoProcessor.from_pretrained`. Returns (model, processor), the model in eval mode on `device`.
    """
    check_safetensors_only(path)
    path = check_checkpoint_folder(path)
    verify_checksums(path)
    on_gpu = str(device).startswith("cuda")
    kwargs = dict(dtype=dtype or (torch.bfloat16 if on_gpu else torch.float32), use_safetensors=True,
                  trust_remote_code=trust_remote_code)
    attn = attn_implementation or default_attention(device)
    if attn:
        kwargs["attn_implementation"] = attn
    if on_gpu:
        kwargs["device_map"] = device
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, **kwargs).to(device)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()   # LoRA: the frozen embeddings must still pass gradients on
        model.config.use_cache = False
    processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code, **processor_kwargs)
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
