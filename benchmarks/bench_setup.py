"""What the rollout and GRPO benchmarks share: their command line, the model folder and the cases."""
import argparse
import tempfile

import torch

from zoomdx_lib.config import get_profile
from zoomdx_lib.data.store import load_items
from zoomdx_lib.model.build import build_tiny_checkpoint


def parser(doc: str, prompts: int) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--model", default=None, help="a base checkpoint folder; default: a fresh tiny model")
    ap.add_argument("--adapter", default=None, help="a LoRA adapter folder for --model")
    ap.add_argument("--data", default=None, help="a run's data folder; default: freshly generated cases")
    ap.add_argument("--prompts", type=int, default=prompts)
    return ap


def setup(args, split: str, n: int):
    """(profile, model folder, n items): the given model or a freshly built tiny one of the profile's
    size (random weights rarely stop early, so every rollout runs the full token budget), and the
    first n cases of the run's `split` or n freshly generated liver cases."""
    torch.set_num_threads(2)
    prof = get_profile(args.profile)
    path = args.model
    if path is None:
        path = tempfile.mkdtemp()
        build_tiny_checkpoint(path, prof.model.min_pixels, prof.model.max_pixels, 0, **prof.model.tiny)
    if args.data:
        return prof, path, load_items(args.data, split)[:n]
    from zoomdx_lib.data.synth import generate_samples
    items = []
    for s, img in generate_samples("liver", n, seed=123, size=prof.data.image_size):
        s.question = "Analyze the echo feature of the ultrasound image."
        items.append((s, img))
    return prof, path, items
