"""Shared fixtures: one tiny Qwen2.5-VL checkpoint per test session (smoke sizes)."""
import numpy as np
import pytest
import torch
from PIL import Image

from zoomdx_lib.config import get_profile

SMOKE = get_profile("smoke")


@pytest.fixture(scope="session")
def tiny_path(tmp_path_factory):
    from zoomdx_lib.models import build_tiny_checkpoint
    path = tmp_path_factory.mktemp("tiny")
    build_tiny_checkpoint(path, min_pixels=SMOKE.min_pixels, max_pixels=SMOKE.max_pixels, seed=0, **SMOKE.tiny)
    return path


@pytest.fixture(scope="session")
def tiny(tiny_path):
    from zoomdx_lib.models import load_model_and_processor
    torch.manual_seed(0)
    return load_model_and_processor(tiny_path)


@pytest.fixture
def speckle_image():
    rng = np.random.default_rng(0)
    arr = (rng.rayleigh(0.3, (256, 256)).clip(0, 1) * 255).astype("uint8")
    arr[90:150, 60:140] //= 3  # a dark "lesion"
    return Image.fromarray(arr)


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """One uninterrupted run of the whole chain at the smoke profile, seed 0: (run folder, manifest)."""
    from zoomdx_lib.pipeline import run_chain
    run = tmp_path_factory.mktemp("smoke_run")
    manifest = run_chain("smoke", run, seed=0, log=print)
    return run, manifest
