"""One training stage of a profile, in one process or in every process `accelerate launch` starts.

    python -m zoomdx_lib.train.launch --stage data --profile cpu --run-dir runs/cpu
    python -m zoomdx_lib.train.launch --stage sft  --profile cpu --run-dir runs/cpu [--mode zoom|single]
    python -m zoomdx_lib.train.launch --stage grpo --profile paper --run-dir runs/paper --variant uncertainty
    accelerate launch --multi_gpu --num_processes 8 -m zoomdx_lib.train.launch --stage sft --profile paper ...

The stages are the notebooks' own functions (:func:`zoomdx_lib.data.store.build_synthetic_splits`,
:func:`zoomdx_lib.train.recipes.run_sft`, :func:`zoomdx_lib.train.recipes.run_grpo`), so a launched run writes
the same folders the notebooks read (`data/`, `checkpoints/`, `models/`). With several processes the
profile's batch sizes are global; only the main process writes files. ``--multi_gpu`` is accelerate's
name for its torchrun launcher: on a machine without CUDA the processes run on CPU over gloo.
``--set stage__field=value`` changes a profile field as everywhere else in the workbook.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional


from ..config import get_profile, parse_key_values
from ..data.store import build_synthetic_splits
from .loop import processes
from .recipes import run_grpo, run_sft

STAGES = ("data", "sft", "grpo")


def main(argv: Optional[list] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m zoomdx_lib.train.launch", description=__doc__.split("\n\n")[0])
    ap.add_argument("--stage", required=True, choices=STAGES)
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--mode", default="zoom", choices=("zoom", "single"), help="SFT dialogue format")
    ap.add_argument("--variant", default="uncertainty", help="GRPO reward variant")
    ap.add_argument("--estimator", default=None, help="GRPO advantage estimator (default: the profile's)")
    ap.add_argument("--set", action="append", default=[], metavar="stage__field=value")
    args = ap.parse_args(argv)
    prof = get_profile(args.profile, **parse_key_values(args.set))
    run_dir = Path(args.run_dir)
    procs = processes(prof.device)
    if args.stage == "data":
        result = {}
        if procs.is_main_process:
            result = {"splits": list(build_synthetic_splits(prof, run_dir / "data")["splits"])}
        procs.wait_for_everyone()
    elif args.stage == "sft":
        r = run_sft(prof, run_dir, args.mode, progress=procs.is_main_process)
        result = {k: r[k] for k in ("base", "adapter", "seconds", "n_examples")} | {"steps": len(r["history_lora"])}
    else:
        models = run_dir / "models"
        base = (models / "sft_zoom_full" if (models / "sft_zoom_full").exists()
                else prof.model.path or models / "tiny_init")
        r = run_grpo(prof, run_dir, args.variant, args.estimator or prof.grpo.estimator, str(base),
                     str(models / "sft_zoom_lora"), progress=procs.is_main_process)
        result = {k: r[k] for k in ("name", "adapter", "seconds")} | {"steps": len(r["log"])}
    if procs.is_main_process:
        print(json.dumps({"stage": args.stage, "processes": procs.num_processes, **result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
