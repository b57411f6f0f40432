"""Peak memory of one GRPO update at micro-batch 1, 4 and 16 with the same P x G trajectories, beside the
memory plan's activation estimate for the same model.

    python benchmarks/bench_grpo_memory.py [--prompts 2] [--profile cpu]

Each micro-batch size runs in a fresh process (peak RSS only grows), on a freshly built tiny model of
the profile's size with LoRA, and the same scripted rollouts of the full token budget (so every
micro-batch sees the same P x G trajectories and the same advantages). Prints the peak RSS of the
update above the process's RSS just before it, and the plan's activations-per-micro-batch term for
this model at fp32 without gradient checkpointing.
"""
import json
import subprocess
import sys
import threading

import psutil
import torch

from bench_setup import parser, setup


class RSSSampler:
    """The largest resident set size of this process seen every millisecond inside the block, in bytes."""

    def __enter__(self):
        self.max, self._stop = 0, threading.Event()
        proc = psutil.Process()

        def watch():
            while not self._stop.is_set():
                self.max = max(self.max, proc.memory_info().rss)
                self._stop.wait(0.001)
        self._thread = threading.Thread(target=watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def one(args) -> None:
    from peft import get_peft_model

    from zoomdx_lib.config import GRPOConfig
    from zoomdx_lib.model.load import load_model_and_processor, lora_config
    from zoomdx_lib.protocol import format_answer, turn
    from zoomdx_lib.rl.rollout import ScriptedPolicy
    from zoomdx_lib.train.grpo import grpo_step

    prof, path, items = setup(args, "train", args.prompts)
    model, processor = load_model_and_processor(path)
    torch.manual_seed(0)
    model = get_peft_model(model, lora_config(prof.hp.lora_rank, prof.hp.lora_alpha, prof.hp.lora_dropout))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    filler = " ".join(["the lesion is darker"] * 12)   # long turns: the token budget of the profile
    t1 = turn(filler, '<tool_call>{"bbox_2d": [40, 40, 120, 120]}</tool_call>')
    labels = lambda i: turn(filler, format_answer("echo", ("Hypoechoic", "Anechoic")[i % 2]))  # noqa: E731
    policy = ScriptedPolicy(processor, [t1], labels)
    cfg = GRPOConfig(micro_batch=args.micro_batch)
    start = psutil.Process().memory_info().rss
    with RSSSampler() as peak:
        grpo_step(model, processor, items, cfg, opt, "uncertainty", prof.rollout, prof.hp, policy=policy)
    print(json.dumps(dict(micro_batch=args.micro_batch, peak_above_start_mib=round((peak.max - start) / 2 ** 20, 1))))


def main():
    ap = parser(__doc__, prompts=2)
    ap.add_argument("--micro-batch", type=int, default=None, help="(internal) one measurement in this process")
    args = ap.parse_args()
    if args.micro_batch is not None:
        return one(args)
    from zoomdx_lib.config import get_profile
    from zoomdx_lib.model.build import build_tokenizer, tiny_config
    from zoomdx_lib.train.plan import memory_plan
    prof = get_profile(args.profile)
    rows = []
    for mb in (1, 4, 16):
        out = subprocess.run([sys.executable, __file__, "--micro-batch", str(mb), "--profile", args.profile,
                              "--prompts", str(args.prompts)], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    config = tiny_config(build_tokenizer(), **prof.model.tiny)
    print(f"{args.prompts} prompts x G={prof.G} trajectories per step, tiny model of the {args.profile} profile, fp32, "
          f"{torch.get_num_threads()} threads")
    for r in rows:
        plan = memory_plan(get_profile(args.profile, grpo__micro_batch=r["micro_batch"],
                                       grpo__prompts_per_step=args.prompts), config)
        est = plan["gib"]["grpo_activations_per_micro_batch"] * 1024
        print(f"micro-batch {r['micro_batch']:2d}: measured peak above start {r['peak_above_start_mib']:8.1f} MiB | "
              f"plan's activations per micro-batch {est:8.1f} MiB")
    base = rows[0]["peak_above_start_mib"]
    print("ratios to micro-batch 1: " + ", ".join(f"{r['micro_batch']}: {r['peak_above_start_mib'] / max(base, 1e-9):.2f}x"
                                                  for r in rows))


if __name__ == "__main__":
    main()
