"""The run folder: what each notebook writes there and reads back, and the one `setup()` call.

A run folder holds ``data/`` (notebook 01), ``models/`` and ``checkpoints/`` (02, 03),
``generations/`` (cached rollouts), ``tables/``, ``figures/``, ``metrics/<notebook>.json`` (results
only), ``phases.json`` (seconds per phase), ``executed/`` and ``manifest.json`` (the runner).

The model registry is the ``models`` entry of a notebook's metrics: ``{name: {base, adapter, kind}}``
with paths relative to the run folder, so metrics compare across run folders and machines.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..config import Profile, get_profile
from ..eval.generate import Method
from ..io import atomic_write_json


def write_metrics(run_dir, notebook: str, metrics: dict) -> Path:
    """Write a notebook's metrics to `run_dir/metrics/{notebook}.json` (atomically); returns the path."""
    return atomic_write_json(Path(run_dir) / "metrics" / f"{notebook}.json", metrics)


def read_metrics(run_dir, notebook: str) -> dict:
    """The metrics a notebook wrote into `run_dir`."""
    path = Path(run_dir) / "metrics" / f"{notebook}.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: notebook {notebook} has not written its metrics in this run folder; "
                                f"run it first (python -m zoomdx_lib.workbook.runner --only {notebook[:2]})")
    return json.loads(path.read_text())


def collect_metrics(run_dir) -> Path:
    """Write `run_dir/metrics.json`: every notebook's metrics under its name, in notebook order.

    It holds results only (wall-clock times are in phases.json and manifest.json), so two runs
    with the same profile and seed can be compared file to file.
    """
    run_dir = Path(run_dir)
    merged = {p.stem: json.loads(p.read_text()) for p in sorted((run_dir / "metrics").glob("*.json"))}
    return atomic_write_json(run_dir / "metrics.json", merged)


def record_phase(run_dir, notebook: str, phase: str, seconds: float) -> None:
    """Add a named phase time (e.g. 'sft_train', 'grpo_generation') to `run_dir/phases.json`."""
    path = Path(run_dir) / "phases.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data.setdefault(notebook, {})[phase] = round(data.get(notebook, {}).get(phase, 0.0) + float(seconds), 3)
    atomic_write_json(path, data)


def run_path(run_dir, path) -> Optional[str]:
    """`path` relative to `run_dir` when it lies inside it (so metrics do not depend on where the run
    folder is), otherwise unchanged (an outside checkpoint). None stays None."""
    if path is None:
        return None
    p, root = Path(path), Path(run_dir).resolve()
    return str(p.resolve().relative_to(root)) if p.is_absolute() and p.resolve().is_relative_to(root) else str(path)


def resolve_run_path(run_dir, path) -> Optional[str]:
    """Inverse of `run_path`: a path stored relative to the run folder becomes absolute again."""
    if path is None:
        return None
    inside = Path(run_dir) / path
    return str(inside) if not Path(path).is_absolute() and inside.exists() else str(path)


@dataclass
class Timer:
    """Seconds a :meth:`Run.phase` block took (nan until it ends)."""

    seconds: float = float("nan")


@dataclass
class Run:
    """What a notebook knows about its run: the profile, the folders, and how to record results."""

    notebook: str
    profile: Profile
    dir: Path

    seed = property(lambda self: self.profile.seed)
    data_dir = property(lambda self: self.dir / "data", doc="the data folder (notebook 01)")
    fig_dir = property(lambda self: self.dir / "figures", doc="figures of this run")
    tables_dir = property(lambda self: self.dir / "tables", doc="CSV, Markdown and LaTeX tables")
    generations_dir = property(lambda self: self.dir / "generations", doc="cached generations per method")

    def figure(self, name: str) -> Path:
        """Where the figure `name` (a file name such as "sft_loss.png") of this run goes."""
        return self.fig_dir / name

    def write_metrics(self, metrics: dict) -> Path:
        """This notebook's results (no wall-clock times: those go through :meth:`phase`)."""
        return write_metrics(self.dir, self.notebook, metrics)

    def read_metrics(self, notebook: str) -> dict:
        return read_metrics(self.dir, notebook)

    @contextlib.contextmanager
    def phase(self, name: str):
        """Time the block and add its seconds to phases.json under this notebook and `name`;
        yields a :class:`Timer` whose ``seconds`` is set when the block ends."""
        timer, t0 = Timer(), time.perf_counter()
        try:
            yield timer
        finally:
            timer.seconds = time.perf_counter() - t0
            record_phase(self.dir, self.notebook, name, timer.seconds)

    def record_phase(self, name: str, seconds: float) -> None:
        record_phase(self.dir, self.notebook, name, seconds)

    def registry(self, methods: Sequence[Method]) -> dict:
        """The ``models`` entry of this notebook's metrics for `methods` (paths relative to the run)."""
        return {m.name: dict(base=run_path(self.dir, m.base), adapter=run_path(self.dir, m.adapter), kind=m.kind,
                             **({"instruct": True} if m.instruct else {})) for m in methods}

    def models(self, notebook: str) -> dict[str, Method]:
        """The methods a notebook registered in its metrics, with absolute paths again."""
        return {name: Method(name, m["kind"], resolve_run_path(self.dir, m["base"]), resolve_run_path(self.dir, m["adapter"]),
                             instruct=bool(m.get("instruct", False)))
                for name, m in self.read_metrics(notebook)["models"].items()}


def setup(notebook: str, profile: str, run_dir, seed: int = 0, **overrides) -> Run:
    """The first call of every notebook: the profile (with `seed` and any ``stage__field`` overrides),
    the run folder (created, absolute) and its figure folder; prints where the run lives."""
    prof = get_profile(profile, seed=seed, **overrides)
    run = Run(notebook=notebook, profile=prof, dir=Path(run_dir).resolve())
    run.fig_dir.mkdir(parents=True, exist_ok=True)
    threads = torch_threads()
    print(f"profile={prof.name}  seed={prof.seed}  run_dir={run.dir}  torch threads={threads}")
    return run


THREADS_ENV = "ZOOMDX_THREADS"


def torch_threads() -> int:
    """Apply ``$ZOOMDX_THREADS`` (when set) to torch and return the thread count in use.

    Measured on 2 cores (`benchmarks/bench_threads.py`): with the machine to itself two threads run SFT
    steps + rollouts in 0.76x the time of one; with one other busy process two threads take 2.1x as long
    (they wait on each other). So the default stays torch's (all cores); set ``ZOOMDX_THREADS=1`` on a
    machine you share.
    """
    value = os.environ.get(THREADS_ENV)
    if value:
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"{THREADS_ENV}={value!r}: expected a positive whole number of threads")
        torch.set_num_threads(int(value))
    return torch.get_num_threads()


def evaluation_methods(run: Run, extra_checkpoints: Optional[dict] = None) -> list[Method]:
    """The rows of the paper's tables for this run, in table order: single-turn SFT (when trained),
    zoom SFT, the oracle crop (zoom SFT given the true box), each GRPO variant of notebook 03,
    then `extra_checkpoints` ({name: checkpoint folder}) as zero-shot two-turn rows."""
    sft = run.models("02_sft_zoom_then_diagnose")
    zoom = sft["zoom_sft"]
    methods = [sft["single_turn_sft"]] if "single_turn_sft" in sft else []
    methods += [zoom, Method("oracle_crop", "oracle", zoom.base, zoom.adapter)]
    methods += list(run.models("03_grpo_uncertainty_alignment").values())
    methods += [Method(name, "zoom", path) for name, path in (extra_checkpoints or {}).items()]
    return methods
