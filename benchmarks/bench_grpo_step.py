"""One GRPO step (P prompts x G=8 rollouts at T=0.7, rewards, PPO-clipped update of the LoRA weights):
time per phase and the FLOP floor of the step.

    python benchmarks/bench_grpo_step.py [--model runs/cpu/models/sft_zoom_full --adapter runs/cpu/models/sft_zoom_lora
                                          --data runs/cpu/data] [--prompts 2] [--steps 4] [--profile cpu]

Without --model a freshly built tiny model of the profile's size is used (it rarely stops early, so
every rollout runs the full token budget). Prints the median generation and update seconds per step,
the step's counted FLOPs (generation + update) and its floor on this machine's measured matmul rate.
"""
import dataclasses
import statistics

import torch

from bench_setup import parser, setup
from flops import count_flops, floor_line, matmul_rate
from zoomdx_lib.train.grpo import grpo_step
from zoomdx_lib.model.load import load_model_and_processor, lora_config


def main():
    ap = parser(__doc__, prompts=2)
    ap.add_argument("--steps", type=int, default=4)
    args = ap.parse_args()
    prof, path, items = setup(args, "train", args.prompts * (args.steps + 1))
    model, processor = load_model_and_processor(path)
    if args.adapter:
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, args.adapter, is_trainable=True)
    else:
        from peft import get_peft_model
        model = get_peft_model(model, lora_config(prof.hp.lora_rank, prof.hp.lora_alpha, prof.hp.lora_dropout))
    cfg = dataclasses.replace(prof.grpo, steps=args.steps, prompts_per_step=args.prompts)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    batches = [items[i * args.prompts:(i + 1) * args.prompts] for i in range(args.steps + 1)]
    torch.manual_seed(0)
    flops, _ = count_flops(lambda: grpo_step(model, processor, batches[0], cfg, opt, "uncertainty", prof.rollout, prof.hp))  # also the warm-up
    rows = [grpo_step(model, processor, b, cfg, opt, "uncertainty", prof.rollout, prof.hp) for b in batches[1:]]
    gen = statistics.median(r["time_generation_s"] for r in rows)
    upd = statistics.median(r["time_update_s"] for r in rows)
    rate = matmul_rate()
    print(f"{args.prompts} prompts x G={prof.G} rollouts per step, {args.steps} timed steps, {torch.get_num_threads()} threads")
    print(f"generation {gen:.2f} s/step, update {upd:.2f} s/step, total {gen + upd:.2f} s/step "
          f"(update share {upd / (gen + upd):.0%})")
    print(floor_line("GRPO step (generation + update)", flops, gen + upd, rate))


if __name__ == "__main__":
    main()
