"""Memory and time plan of a profile on a checkpoint: will one GPU do, before launching?

    python -m zoomdx_lib.train.plan --profile paper [--model DIR | --config qwen2.5-vl-7b] [--gpu-gib 80]

Parameter counts are exact (the model is built on the meta device from its config: no memory, no
weights). Everything else is an estimate from the sequence lengths the profile implies:

* weights: all parameters at the training dtype (bf16 on CUDA, fp32 on CPU);
* LoRA + optimizer: trainable parameters (LoRA on the language model, the merger) with their
  gradient and AdamW's two fp32 moments;
* activations per micro-batch: per token and layer the tensors a decoder layer keeps for backward
  (about 8 h + 4 I + 2 kv values, h the hidden size, I the MLP size, kv the key/value width) and the
  same for the vision tower per patch; with gradient checkpointing only each layer's input is kept
  and one layer is recomputed at a time. Logits are formed only at the policy's own tokens;
* KV cache of the G rollouts of P prompts during generation.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from ..config import Profile, get_profile, parse_key_values
from ..geometry import model_input_size
from ..model.load import LORA_TARGET_REGEX

GIB = 1024 ** 3
CONFIGS = Path(__file__).resolve().parents[1] / "model" / "configs"
PROMPT_TEXT_TOKENS = 40      # system prompt, role headers, the question
RATIONALE_TOKENS = 60        # one <think> rationale of an SFT dialogue


@dataclass
class Sizes:
    """What the plan needs to know of a model, read from its config."""

    params: int
    trainable: int
    layers: int
    hidden: int
    intermediate: int
    kv_width: int
    vocab: int
    vision_layers: int
    vision_hidden: int
    vision_intermediate: int


def model_sizes(config: Qwen2_5_VLConfig, lora_rank: int = 32) -> Sizes:
    """Exact parameter counts (the model built on the meta device) and the shapes the estimate uses."""
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(config)
    params = sum(p.numel() for p in model.parameters())
    pattern = re.compile(LORA_TARGET_REGEX)
    lora = sum(lora_rank * (m.in_features + m.out_features) for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and pattern.fullmatch(n))
    merger = sum(p.numel() for n, p in model.named_parameters() if ".merger." in n)
    t, v = config.text_config, config.vision_config
    head_dim = t.hidden_size // t.num_attention_heads
    return Sizes(params=params, trainable=lora + merger, layers=t.num_hidden_layers, hidden=t.hidden_size,
                 intermediate=t.intermediate_size, kv_width=t.num_key_value_heads * head_dim, vocab=t.vocab_size,
                 vision_layers=v.depth, vision_hidden=v.hidden_size, vision_intermediate=v.intermediate_size)


def sequence_tokens(profile: Profile) -> dict:
    """Tokens of one two-turn trajectory at the profile's sizes: image, crop, text and generated tokens."""
    w, h = model_input_size(profile.data.image_size, profile.data.image_size, profile.model.min_pixels,
                            profile.model.max_pixels)
    image, crop = w * h // 784, max(1, profile.rollout.crop_pixels // 784)   # 28 x 28 pixels per token
    t1, t2 = profile.rollout.max_new_tokens
    return dict(image=image, crop=crop, patches=4 * (image + crop), generated=t1 + t2,
                trajectory=PROMPT_TEXT_TOKENS + image + 15 + crop + t1 + t2,
                sft_example=PROMPT_TEXT_TOKENS + image + 15 + crop + 2 * RATIONALE_TOKENS + 30)


def _activation_bytes(s: Sizes, tokens: int, patches: int, dtype_bytes: int, checkpointing: bool) -> int:
    per_token = dtype_bytes * (8 * s.hidden + 4 * s.intermediate + 2 * s.kv_width)
    per_patch = dtype_bytes * (8 * s.vision_hidden + 4 * s.vision_intermediate)
    if checkpointing:   # each layer's input kept, one layer's full activations at a time
        return (tokens * (dtype_bytes * s.hidden * s.layers + per_token)
                + patches * (dtype_bytes * s.vision_hidden * s.vision_layers + per_patch))
    return tokens * per_token * s.layers + patches * per_patch * s.vision_layers


def memory_plan(profile: Profile, config: Qwen2_5_VLConfig, gpu_gib: float = 80.0) -> dict:
    """Estimated GiB per component for SFT and for one GRPO step, tokens per step, and whether the
    largest total fits `gpu_gib`. See the module docstring for what each term counts."""
    s = model_sizes(config, profile.hp.lora_rank)
    seq = sequence_tokens(profile)
    on_gpu = profile.device.startswith("cuda")
    b = 2 if on_gpu else 4
    ckpt = profile.model.gradient_checkpointing
    weights = s.params * b
    lora_opt = s.trainable * (b + b + 8)        # weight, gradient, AdamW moments in fp32
    mb = profile.grpo.micro_batch
    G, P = profile.hp.group_size, profile.grpo.prompts_per_step
    grpo_act = mb * _activation_bytes(s, seq["trajectory"], seq["patches"], b, ckpt)
    grpo_logits = mb * seq["generated"] * s.vocab * 4 * 2          # fp32 logits at own tokens and their grad
    kv = 2 * s.layers * s.kv_width * b * seq["trajectory"] * P * G
    sft_act = profile.sft.batch_size * _activation_bytes(s, seq["sft_example"], seq["patches"], b, ckpt)
    sft_logits = profile.sft.batch_size * seq["sft_example"] * s.vocab * 4 * 2
    gib = lambda x: round(x / GIB, 2)  # noqa: E731
    grpo_total = weights + lora_opt + max(grpo_act + grpo_logits, kv)   # generation and update do not overlap
    sft_total = weights + lora_opt + sft_act + sft_logits
    return dict(
        params=s.params, trainable=s.trainable, dtype="bf16" if on_gpu else "fp32", gradient_checkpointing=ckpt,
        tokens=dict(per_trajectory=seq["trajectory"], image=seq["image"], crop=seq["crop"],
                    grpo_step=seq["trajectory"] * P * G, sft_step=seq["sft_example"] * profile.sft.batch_size),
        gib=dict(weights=gib(weights), lora_and_optimizer=gib(lora_opt),
                 grpo_activations_per_micro_batch=gib(grpo_act + grpo_logits), grpo_kv_cache=gib(kv),
                 sft_activations_per_batch=gib(sft_act + sft_logits), grpo_total=gib(grpo_total),
                 sft_total=gib(sft_total)),
        gpu_gib=gpu_gib, fits=bool(max(grpo_total, sft_total) / GIB <= gpu_gib),
        launch={n: launch_config(max(grpo_total, sft_total) / GIB <= gpu_gib, n) for n in (1, 8)})


def time_plan(profile: Profile, config: Qwen2_5_VLConfig, n_gpus: int = 1, tflops: float = 989.0,
              mfu: float = 0.35, hbm_tb_s: float = 3.35) -> dict:
    """Rough seconds per SFT and per GRPO step on `n_gpus` data-parallel GPUs (defaults: H100 SXM bf16 dense
    989 TFLOP/s at `mfu` model-FLOP utilisation, 3.35 TB/s of HBM).

    Compute: 2 FLOPs per parameter and token forward, and as much again backward for the activation
    gradients (frozen weights need no weight gradients; LoRA's are negligible), 1.33x more with
    activation checkpointing (the forward runs twice). GRPO adds a no-graph forward for the old
    log-probabilities. Generation is bandwidth bound: every decoding step reads all weights once, for
    each of the turns' tokens in sequence. An estimate to plan a budget with, not a measurement.

    >>> from zoomdx_lib.config import get_profile
    >>> t = time_plan(get_profile("paper"), load_config(), n_gpus=8)
    >>> t["grpo_step_s"] < time_plan(get_profile("paper"), load_config(), n_gpus=1)["grpo_step_s"]
    True
    """
    s, seq = model_sizes(config, profile.hp.lora_rank), sequence_tokens(profile)
    rate = tflops * 1e12 * mfu
    recompute = 4 / 3 if profile.model.gradient_checkpointing else 1.0
    train_flops = lambda tokens: 4 * s.params * tokens * recompute  # noqa: E731
    G, P = profile.hp.group_size, profile.grpo.prompts_per_step
    sft = train_flops(seq["sft_example"] * profile.sft.batch_size) / n_gpus / rate
    grpo_tokens = seq["trajectory"] * P * G / n_gpus
    update = (train_flops(grpo_tokens) + 2 * s.params * grpo_tokens) / rate
    generation = seq["generated"] * (2 * s.params) / (hbm_tb_s * 1e12)
    return dict(n_gpus=n_gpus, sft_step_s=round(sft, 2), grpo_update_s=round(update, 2),
                grpo_generation_s=round(generation, 2), grpo_step_s=round(update + generation, 2),
                assumptions=dict(tflops=tflops, mfu=mfu, hbm_tb_s=hbm_tb_s))


def launch_config(fits: bool, n_gpus: int) -> str:
    """The shipped accelerate config for `n_gpus` (1 or 8): data parallel when one GPU holds the model and its
    LoRA training state (`fits`), DeepSpeed ZeRO-3 (with CPU offload on one GPU) when it does not.

    >>> launch_config(True, 8), launch_config(False, 1)
    ('configs/accelerate/8gpu_ddp.yaml', 'configs/accelerate/1gpu_zero3_offload.yaml')
    """
    if n_gpus not in (1, 8):
        raise ValueError(f"configs are shipped for 1 and 8 GPUs, not {n_gpus}; copy the nearest and set num_processes")
    name = {(True, 1): "1gpu", (True, 8): "8gpu_ddp", (False, 1): "1gpu_zero3_offload", (False, 8): "8gpu_zero3"}
    return f"configs/accelerate/{name[fits, n_gpus]}.yaml"


def load_config(model: Optional[str] = None, config: Optional[str] = None) -> Qwen2_5_VLConfig:
    """A checkpoint folder's config, or a config shipped in ``zoomdx_lib/model/configs`` by name."""
    if model:
        return Qwen2_5_VLConfig.from_pretrained(model)
    path = CONFIGS / f"{config or 'qwen2.5-vl-7b-instruct'}.json"
    if not path.exists():
        raise FileNotFoundError(f"no shipped config {path.name}; have: {sorted(p.stem for p in CONFIGS.glob('*.json'))}")
    return Qwen2_5_VLConfig(**json.loads(path.read_text()))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m zoomdx_lib.train.plan", description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="paper")
    ap.add_argument("--model", default=None, help="checkpoint folder whose config.json to plan for")
    ap.add_argument("--config", default=None, help="a shipped config (default qwen2.5-vl-7b-instruct)")
    ap.add_argument("--gpu-gib", type=float, default=80.0)
    ap.add_argument("--set", action="append", default=[], metavar="STAGE__FIELD=VALUE")
    args = ap.parse_args(argv)
    prof, config = get_profile(args.profile, **parse_key_values(args.set)), load_config(args.model, args.config)
    plan = memory_plan(prof, config, args.gpu_gib)
    if prof.device.startswith("cuda"):
        plan["seconds"] = {n: time_plan(prof, config, n) for n in (1, 8)}
    print(json.dumps(plan, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
