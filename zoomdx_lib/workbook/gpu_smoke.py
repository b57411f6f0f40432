"""`make gpu-smoke`: the paper profile's SFT and GRPO steps on Qwen2.5-VL-7B's own architecture, random weights.

    python -m zoomdx_lib.workbook.gpu_smoke                       # on a CUDA machine: 2 SFT + 2 GRPO steps
    python -m zoomdx_lib.workbook.gpu_smoke --tiny --device cpu   # the same code path with the paper-shaped tiny model

Builds the model from the 7B configuration shipped in ``zoomdx_lib/model/configs`` (no download, no
weights: random bf16 parameters straight on the GPU), the paper-shaped tokenizer and processor with
the paper profile's pixel bounds, and a few freshly generated cases at the paper's image size. Then
LoRA r=32 SFT through TRL's SFTTrainer at the paper's batch and GRPO with G=8 at the paper's token
budget (random weights never stop early, so every turn runs to its limit: the worst case). Prints one
JSON line per stage with step times, tokens/s and peak GPU memory, beside the memory plan's estimate
(:mod:`zoomdx_lib.train.plan`) for the same profile and configuration.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import torch
from peft import get_peft_model
from transformers import Qwen2_5_VLForConditionalGeneration

from ..config import get_profile, parse_key_values
from ..data.store import build_synthetic_splits, load_items
from ..model.build import build_processor, build_tokenizer, paper_shaped_config
from ..model.load import default_attention, lora_config
from ..train.common import trainable_adamw
from ..train.grpo import grpo_step
from ..train.plan import load_config, memory_plan
from ..train.sft import cosine_schedule, dialogue_records
from ..train.sft_trainer import DialogueDataset, train_with_trl

SPECIAL_IDS = {"image_token_id": "<|image_pad|>", "video_token_id": "<|video_pad|>",
               "vision_start_token_id": "<|vision_start|>", "vision_end_token_id": "<|vision_end|>"}


def smoke_model(tokenizer, device: str, tiny: bool):
    """Random-weight Qwen2.5-VL: the 7B's configuration (or the paper-shaped tiny one), the tokenizer's special ids."""
    config = paper_shaped_config(tokenizer) if tiny else load_config(config="qwen2.5-vl-7b-instruct")
    for name, token in SPECIAL_IDS.items():   # the smoke tokenizer is the paper-shaped one: use its ids
        setattr(config, name, tokenizer.convert_tokens_to_ids(token))
    for cfg in (config, config.text_config):
        cfg.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
        cfg.pad_token_id = tokenizer.pad_token_id
        cfg.bos_token_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    on_gpu = device.startswith("cuda")
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(
            config, dtype=torch.bfloat16 if on_gpu else torch.float32,
            attn_implementation=default_attention(device) or "sdpa")
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    return model, config


def _peak_gib(device: str) -> Optional[float]:
    return round(torch.cuda.max_memory_allocated() / 2 ** 30, 2) if device.startswith("cuda") else None


def _reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def run(device: str = "cuda", tiny: bool = False, sft_steps: int = 2, grpo_steps: int = 2, out=None,
        overrides: Optional[dict] = None) -> dict:
    """Run the smoke and return {device, plan, sft, grpo}; see the module docstring."""
    overrides = dict(device=device, **(overrides or {}))
    prof = get_profile("paper", **overrides)
    out = Path(out or tempfile.mkdtemp(prefix="zoomdx-gpu-smoke-"))
    tok = build_tokenizer(shape="paper")
    processor = build_processor(tok, **prof.model.pixel_bounds)
    processor.tokenizer.padding_side = "left"
    t0 = time.perf_counter()
    torch.manual_seed(prof.seed)
    model, config = smoke_model(tok, device, tiny)
    build_s = time.perf_counter() - t0
    if prof.model.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
        model.config.use_cache = False
    model = get_peft_model(model, lora_config(prof.hp.lora_rank, prof.hp.lora_alpha, prof.hp.lora_dropout))
    n = max(prof.sft.batch_size, prof.grpo.prompts_per_step)
    data = out / "data"
    build_synthetic_splits(get_profile("paper", data__n_train_per_organ=(n + 1) // 2, data__n_test_per_organ=1,
                                       **{k: v for k, v in overrides.items() if k != "device"}), data, progress=False)
    plan = memory_plan(prof, config)

    # SFT: the paper's batch through TRL
    _reset_peak(device)
    opt = trainable_adamw(model, prof.sft.lr_lora, weight_decay=0.01)   # torch's AdamW default decay
    dataset = DialogueDataset(dialogue_records(data, "train", "zoom"), data)
    t1 = time.perf_counter()
    rows = train_with_trl(model, processor, dataset, sft_steps, prof.sft.batch_size, opt,
                          cosine_schedule(opt, sft_steps, 1), out / "sft", checkpoint_every=10 ** 9, resume=False,
                          device=device, progress=False)
    sft_s = time.perf_counter() - t1
    sft_tokens = plan["tokens"]["sft_step"]
    sft = dict(steps=len(rows), step_s=[round(r["time_s"], 2) for r in rows], peak_gib=_peak_gib(device),
               plan_total_gib=plan["gib"]["sft_total"], planned_tokens_per_step=sft_tokens,
               tokens_per_s=round(sft_tokens * len(rows) / sft_s, 1))

    # GRPO: P prompts x G rollouts at the paper's token budget
    items = load_items(data, "train")
    opt = trainable_adamw(model, prof.grpo.lr, weight_decay=0.01)
    steps = []
    _reset_peak(device)
    for k in range(grpo_steps):
        batch = [items[(k * prof.grpo.prompts_per_step + i) % len(items)] for i in range(prof.grpo.prompts_per_step)]
        row = grpo_step(model, processor, batch, prof.grpo, opt, "uncertainty", prof.rollout, prof.hp)
        steps.append(row)
    gen_tokens = [r["generated_tokens"] for r in steps]
    grpo = dict(steps=len(steps), generation_s=[round(r["time_generation_s"], 2) for r in steps],
                generated_tokens_per_s=[round(r["generated_tokens"] / r["time_generation_s"], 1) for r in steps],
                update_s=[round(r["time_update_s"], 2) for r in steps], peak_gib=_peak_gib(device),
                plan_total_gib=plan["gib"]["grpo_total"], plan_kv_cache_gib=plan["gib"]["grpo_kv_cache"],
                planned_tokens_per_step=plan["tokens"]["grpo_step"], generated_tokens=gen_tokens)
    name = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    return dict(device=name, model="paper-shaped tiny" if tiny else "Qwen2.5-VL-7B architecture (random weights)",
                params=plan["params"], build_s=round(build_s, 1), plan=plan["gib"], sft=sft, grpo=grpo)


def main(argv: Optional[list] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m zoomdx_lib.workbook.gpu_smoke", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="the paper-shaped tiny model instead of the 7B architecture")
    ap.add_argument("--sft-steps", type=int, default=2)
    ap.add_argument("--grpo-steps", type=int, default=2)
    ap.add_argument("--out", default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--set", action="append", default=[], metavar="STAGE__FIELD=VALUE",
                    help="paper-profile field to change, e.g. --set grpo__micro_batch=4")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device here: run on a GPU machine, or pass --tiny --device cpu to check the code path",
              file=sys.stderr)
        return 2
    print(json.dumps(run(args.device, args.tiny, args.sft_steps, args.grpo_steps, args.out,
                         parse_key_values(args.set))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
