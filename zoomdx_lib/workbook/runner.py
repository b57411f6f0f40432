"""The workbook runner: execute the numbered notebooks in order with papermill.

    python -m zoomdx_lib.workbook.runner --profile cpu --out runs/cpu [--force] [--only 02,03]

The notebooks' sources are jupytext percent files ``notebooks/NN_name.py``, each paired with the
``NN_name.ipynb`` that JupyterLab opens; the runner executes the ``.py`` source and refuses a pair
whose two files disagree (a notebook without a ``.py`` source runs from its ``.ipynb``). Each
notebook gets the parameters `profile`, `run_dir` and `seed` (plus any `--param k=v`), is written
executed to `run_dir/executed/`, and writes its metrics to `run_dir/metrics/<notebook>.json` (all of
them together in `run_dir/metrics.json` at the end of the chain; results only, no wall-clock times).
`run_dir/manifest.json` records the profile, seed, package versions, git commit and time per
notebook. A rerun skips notebooks already done with the same parameters and the same source
(fingerprinted), unless `--force`. A failed notebook stops the chain with its name and the failing
cell's error. Notebooks added later plug in by number.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import jupytext
import nbformat
import papermill as pm

from ..config import parse_key_values
from ..io import atomic_write_json
from .rundir import collect_metrics

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_NOTEBOOKS = REPO_ROOT / "notebooks"
SYNC_HINT = "jupytext --sync {py}  (or open the pair in JupyterLab with jupytext installed and save)"


class NotebookOutOfSync(RuntimeError):
    """A notebook's .py source and its paired .ipynb hold different cells."""


def _cells(nb) -> list[tuple]:
    return [(c.cell_type, c.source.strip(), tuple(c.metadata.get("tags", ()))) for c in nb.cells]


def pair_differences(py) -> list[str]:
    """How the paired ``.ipynb`` of a jupytext source ``py`` differs from it (cell kinds, sources, tags);
    [] when in sync or when there is no ``.ipynb``. Outputs and cell ids are not compared."""
    py = Path(py)
    ipynb = py.with_suffix(".ipynb")
    if not ipynb.exists():
        return []
    a, b = _cells(jupytext.read(py)), _cells(nbformat.read(str(ipynb), as_version=4))
    if len(a) != len(b):
        return [f"{py.name} has {len(a)} cells, {ipynb.name} has {len(b)}"]
    return [f"cell {i + 1}: {ipynb.name} differs from {py.name}" for i, (x, y) in enumerate(zip(a, b)) if x != y]


def load_source(path):
    """The notebook to execute: a jupytext ``.py`` source (checked against its pair) or an ``.ipynb``."""
    path = Path(path)
    if path.suffix == ".py":
        diff = pair_differences(path)
        if diff:
            raise NotebookOutOfSync(f"{path.name} and its .ipynb are out of sync ({'; '.join(diff[:3])}); "
                                    f"sync them with: {SYNC_HINT.format(py=path)}")
        return jupytext.read(path)
    return nbformat.read(str(path), as_version=4)


def discover_notebooks(notebooks_dir=DEFAULT_NOTEBOOKS) -> list[Path]:
    """Numbered notebooks in order: the ``NN_name.py`` source of each, or its ``.ipynb`` when it has none."""
    found = {}
    for p in sorted(Path(notebooks_dir).glob("[0-9][0-9]_*")):
        if p.suffix == ".py" or (p.suffix == ".ipynb" and p.stem not in found):
            found[p.stem] = p
    if not found:
        raise FileNotFoundError(f"no numbered notebooks (NN_name.py or NN_name.ipynb) in {notebooks_dir}")
    return [found[k] for k in sorted(found)]


def versions() -> dict:
    out = {"python": platform.python_version()}
    for mod in ("torch", "transformers", "peft", "trl", "accelerate", "papermill", "numpy"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - a missing optional package is just not listed
            pass
    return out


def git_commit() -> Optional[str]:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except Exception:  # noqa: BLE001
        return None


def _fingerprint(source: Path, params: dict) -> str:
    """Hash of the notebook's source file and its parameters: a change to either re-runs it."""
    h = hashlib.sha256(source.read_bytes())
    h.update(json.dumps(params, sort_keys=True).encode())
    return h.hexdigest()[:16]


class NotebookFailed(RuntimeError):
    pass


def _open_manifest(run_dir: Path, profile: str, seed: int) -> dict:
    """The run's manifest (the previous one, if any, so finished notebooks are known) stamped with
    this run's profile, seed, versions, commit and start time."""
    path = run_dir / "manifest.json"
    manifest = json.loads(path.read_text()) if path.exists() else {}
    manifest.update(profile=profile, seed=seed, versions=versions(), git_commit=git_commit(),
                    run_dir=str(run_dir), started=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    manifest.setdefault("notebooks", {})
    return manifest


def _execute(nb: Path, source, run_dir: Path, manifest: dict, fp: str, params: dict, kernel_name: str,
             timeout: Optional[int]) -> float:
    """Run one notebook with papermill into run_dir/executed/ and record it in the manifest (written
    before and after); returns its seconds. Raises NotebookFailed naming the notebook and cell."""
    manifest_path = run_dir / "manifest.json"
    manifest["notebooks"][nb.stem] = dict(status="running", fingerprint=fp)
    atomic_write_json(manifest_path, manifest)
    t0 = time.perf_counter()
    executed = run_dir / "executed" / f"{nb.stem}.ipynb"
    try:
        pm.execute_notebook(source, str(executed), parameters=params,
                            kernel_name=kernel_name, cwd=str(nb.parent), progress_bar=False,
                            log_output=False, execution_timeout=timeout)
    except (pm.PapermillExecutionError, TimeoutError) as err:
        if isinstance(err, TimeoutError):
            err.exec_count, err.ename, err.evalue = "?", "TimeoutError", str(err)[:300]
        manifest["notebooks"][nb.stem] = dict(status="failed", fingerprint=fp, cell=err.exec_count,
                                              error=f"{err.ename}: {err.evalue}",
                                              seconds=round(time.perf_counter() - t0, 2))
        atomic_write_json(manifest_path, manifest)
        raise NotebookFailed(f"{nb.name} failed in cell [{err.exec_count}]: {err.ename}: {err.evalue} "
                             f"(executed copy: {executed})") from None
    seconds = round(time.perf_counter() - t0, 2)
    manifest["notebooks"][nb.stem] = dict(status="done", fingerprint=fp, seconds=seconds,
                                          metrics=str(run_dir / "metrics" / f"{nb.stem}.json"))
    atomic_write_json(manifest_path, manifest)
    return seconds


def _finish(run_dir: Path, manifest: dict, publish_figures: Optional[str], log) -> None:
    """Close the manifest (phases, finish time, total seconds), gather the metrics and copy the
    figures to `publish_figures` if given."""
    phases = run_dir / "phases.json"
    if phases.exists():
        manifest["phases"] = json.loads(phases.read_text())
    manifest["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    manifest["total_seconds"] = round(sum(e.get("seconds", 0) for e in manifest["notebooks"].values()), 2)
    atomic_write_json(run_dir / "manifest.json", manifest)
    collect_metrics(run_dir)
    if publish_figures and (run_dir / "figures").exists():
        dest = Path(publish_figures)
        dest.mkdir(parents=True, exist_ok=True)
        for f in (run_dir / "figures").glob("*.png"):
            shutil.copy2(f, dest / f.name)
        log(f"figures copied to {dest}")


def run_chain(profile: str, run_dir, notebooks_dir=DEFAULT_NOTEBOOKS, force: bool = False,
              only: Optional[list[str]] = None, seed: int = 0, extra_params: Optional[dict] = None,
              publish_figures: Optional[str] = None, kernel_name: str = "python3", log=print,
              cell_timeout: Optional[int] = None) -> dict:
    """Execute the chain; returns the manifest. Raises NotebookFailed naming the notebook and cell.

    cell_timeout: seconds one cell may run (default: 900 for the smoke profile, unlimited otherwise),
    so a kernel that stops answering fails the chain with the cell named instead of hanging.
    """
    run_dir = Path(run_dir).resolve()
    (run_dir / "executed").mkdir(parents=True, exist_ok=True)
    manifest = _open_manifest(run_dir, profile, seed)
    notebooks = discover_notebooks(notebooks_dir)
    if only:
        notebooks = [nb for nb in notebooks if nb.name[:2] in only or nb.stem in only]
    sources = {nb: load_source(nb) for nb in notebooks}  # every pair checked before anything runs
    params = dict(profile=profile, run_dir=str(run_dir), seed=seed, **(extra_params or {}))
    timeout = cell_timeout if cell_timeout is not None else (900 if profile == "smoke" else None)
    for k, nb in enumerate(notebooks, 1):
        fp = _fingerprint(nb, params)
        entry = manifest["notebooks"].get(nb.stem, {})
        if not force and entry.get("status") == "done" and entry.get("fingerprint") == fp:
            log(f"[{k}/{len(notebooks)}] {nb.stem}: done before with the same parameters, skipped")
            continue
        log(f"[{k}/{len(notebooks)}] {nb.stem}: running (profile={profile}) ...")
        seconds = _execute(nb, sources[nb], run_dir, manifest, fp, params, kernel_name, timeout)
        log(f"[{k}/{len(notebooks)}] {nb.stem}: done in {seconds:.1f} s")
    _finish(run_dir, manifest, publish_figures, log)
    return manifest


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m zoomdx_lib.workbook.runner", description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="cpu", help="smoke | cpu | paper (default cpu)")
    ap.add_argument("--out", default=None, help="run folder (default runs/<profile>)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="re-run notebooks already done")
    ap.add_argument("--only", default=None, help="comma-separated notebook numbers, e.g. 01,02")
    ap.add_argument("--notebooks", default=str(DEFAULT_NOTEBOOKS), help="folder of numbered notebooks")
    ap.add_argument("--param", action="append", default=[], help="extra notebook parameter k=v (JSON value)")
    ap.add_argument("--set", action="append", default=[], metavar="STAGE__FIELD=VALUE",
                    help="change a profile field in every notebook, e.g. --set grpo__steps=20 (JSON value)")
    ap.add_argument("--publish-figures", default=None, help="copy the run's figures/*.png here")
    args = ap.parse_args(argv)
    extra = parse_key_values(args.param)
    if args.set:
        extra["overrides"] = parse_key_values(args.set)
    out = args.out or f"runs/{args.profile}"
    try:
        manifest = run_chain(args.profile, out, args.notebooks, args.force,
                             args.only.split(",") if args.only else None, args.seed, extra, args.publish_figures)
    except (NotebookFailed, NotebookOutOfSync) as err:
        print(f"FAILED: {err}", file=sys.stderr)
        return 1
    print(f"chain finished in {manifest['total_seconds']:.1f} s; manifest: {Path(out) / 'manifest.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
