"""One GRPO step (P prompts x G=8 rollouts at T=0.7, rewards, PPO-clipped update of the LoRA weights):
time per phase and the FLOP floor of the step, for several prompt counts in one run.

    python benchmarks/bench_grpo_step.py [--model runs/cpu/models/sft_zoom_full --adapter runs/cpu/models/sft_zoom_lora
                                          --data runs/cpu/data] [--sizes 2,8] [--steps 4] [--profile cpu]
                                          [--set grpo__ppo_epochs=2 grpo__beta=0.04 ...]

Without --model a freshly built tiny model of the profile's size is used (it rarely stops early, so
every rollout runs the full token budget). For each size prints the median generation and update
seconds per step, the step's counted FLOPs (generation + update) and its floor on this machine's
measured matmul rate; then the time ratio between the sizes against their rollout ratio.
"""
import dataclasses
import statistics

import torch

from bench_setup import parser, setup
from flops import count_flops, floor_line, matmul_rate
from zoomdx_lib.config import get_profile, parse_key_values
from zoomdx_lib.train.grpo import grpo_step
from zoomdx_lib.model.load import load_model_and_processor, lora_config


def time_size(prof, path, adapter, items, prompts: int, steps: int) -> dict:
    """Median generation / update seconds of `steps` timed steps of `prompts` prompts, and the FLOPs of one."""
    model, processor = load_model_and_processor(path)
    if adapter:
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, adapter, is_trainable=True)
    else:
        from peft import get_peft_model
        model = get_peft_model(model, lora_config(prof.hp.lora_rank, prof.hp.lora_alpha, prof.hp.lora_dropout))
    cfg = dataclasses.replace(prof.grpo, steps=steps, prompts_per_step=prompts)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    batches = [items[i * prompts:(i + 1) * prompts] for i in range(steps + 1)]
    torch.manual_seed(0)
    step = lambda b: grpo_step(model, processor, b, cfg, opt, "uncertainty", prof.rollout, prof.hp)
    flops, _ = count_flops(lambda: step(batches[0]))  # also the warm-up
    rows = [step(b) for b in batches[1:]]
    return dict(prompts=prompts, flops=flops, gen=statistics.median(r["time_generation_s"] for r in rows),
                upd=statistics.median(r["time_update_s"] for r in rows))


def main():
    ap = parser(__doc__, prompts=2)
    ap.add_argument("--sizes", default=None, help="comma-separated prompt counts (default: --prompts)")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="profile overrides, e.g. grpo__ppo_epochs=2")
    args = ap.parse_args()
    sizes = [int(s) for s in (args.sizes or str(args.prompts)).split(",")]
    prof, path, items = setup(args, "train", max(sizes) * (args.steps + 1))
    prof = get_profile(args.profile, **parse_key_values(args.set))
    rate = matmul_rate()
    print(f"G={prof.G} rollouts per prompt, {args.steps} timed steps per size, {torch.get_num_threads()} threads, "
          f"ppo_epochs={prof.grpo.ppo_epochs}, beta={prof.grpo.beta}, refill_rounds={prof.grpo.refill_rounds}")
    results = []
    for p in sizes:
        r = time_size(prof, path, args.adapter, items, p, args.steps)
        results.append(r)
        total = r["gen"] + r["upd"]
        print(f"{p} x {prof.G}: generation {r['gen']:.2f} s/step, update {r['upd']:.2f} s/step, total {total:.2f} s/step "
              f"(update share {r['upd'] / total:.0%})")
        print("  " + floor_line(f"GRPO step {p}x{prof.G} (generation + update)", r["flops"], total, rate))
    for r in results[1:]:
        a, b = results[0], r
        print(f"{b['prompts']}x{prof.G} vs {a['prompts']}x{prof.G}: {b['prompts'] / a['prompts']:.1f}x the rollouts, "
              f"{(b['gen'] + b['upd']) / (a['gen'] + a['upd']):.2f}x the time, {b['flops'] / a['flops']:.2f}x the FLOPs")


if __name__ == "__main__":
    main()
