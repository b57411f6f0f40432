"""Shared fixtures: one tiny Qwen2.5-VL checkpoint per test session (smoke sizes), real data by name."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from zoomdx_lib.config import DATA_ENV, data_path, get_profile

SMOKE = get_profile("smoke")


@pytest.fixture(scope="session")
def tiny_path(tmp_path_factory):
    from zoomdx_lib.model.build import build_tiny_checkpoint
    path = tmp_path_factory.mktemp("tiny")
    build_tiny_checkpoint(path, min_pixels=SMOKE.model.min_pixels, max_pixels=SMOKE.model.max_pixels, seed=0, **SMOKE.model.tiny)
    return path


@pytest.fixture(scope="session")
def tiny(tiny_path):
    from zoomdx_lib.model.load import load_model_and_processor
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
    from zoomdx_lib.workbook.runner import run_chain
    run = tmp_path_factory.mktemp("smoke_run")
    manifest = run_chain("smoke", run, seed=0, log=print)
    return run, manifest


@pytest.fixture
def real_data():
    """``real_data(name)``: the real data set `name` under $ZOOMDX_DATA.

    Skips (with the reason) when ZOOMDX_DATA is unset; fails when it is set but the data set is
    missing, so a CI that promises real data cannot pass without it.
    """
    def get(name: str):
        if not os.environ.get(DATA_ENV):
            pytest.skip(f"{DATA_ENV} is not set: no real data set {name!r} to test with (see README, 'Real data')")
        path = data_path(name)
        if not path.is_dir():
            pytest.fail(f"{DATA_ENV}={os.environ[DATA_ENV]} but the real data set {name!r} is not at {path}")
        return path
    return get
