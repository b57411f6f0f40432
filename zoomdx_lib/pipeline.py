"""The workbook runner: execute the numbered notebooks in order with papermill.

    python -m zoomdx_lib.pipeline --profile cpu --out runs/cpu [--force] [--only 02,03]

Each notebook gets the parameters `profile`, `run_dir` and `seed` (plus any `--param k=v`),
is written executed to `run_dir/executed/`, and writes its metrics through `write_metrics`
to `run_dir/metrics/<notebook>.json` (all of them together in `run_dir/metrics.json` at the end of
the chain; results only, no wall-clock times). `run_dir/manifest.json` records the profile, seed,
package versions, git commit and time per notebook. A rerun skips notebooks already done with
the same parameters and the same notebook source, unless `--force`. A failed notebook stops the
chain with its name and the failing cell's error. Notebooks added later plug in by number.
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

from .checkpoints import atomic_write_json

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_NOTEBOOKS = REPO_ROOT / "notebooks"


def write_metrics(run_dir, notebook: str, metrics: dict) -> Path:
    """Write a notebook's metrics to `run_dir/metrics/{notebook}.json` (atomically); returns the path."""
    path = Path(run_dir) / "metrics" / f"{notebook}.json"
    atomic_write_json(path, metrics)
    return path


def read_metrics(run_dir, notebook: str) -> dict:
    return json.loads((Path(run_dir) / "metrics" / f"{notebook}.json").read_text())


def run_path(run_dir, path) -> Optional[str]:
    """`path` relative to `run_dir` when it lies inside it (so metrics do not depend on where the run
    folder is), otherwise unchanged (a model id or an outside checkpoint). None stays None."""
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


def collect_metrics(run_dir) -> Path:
    """Write `run_dir/metrics.json`: every notebook's metrics under its name, in notebook order.

    It holds results only (wall-clock times are in phases.json and manifest.json), so two runs
    with the same profile and seed can be compared file to file.
    """
    run_dir = Path(run_dir)
    merged = {p.stem: json.loads(p.read_text()) for p in sorted((run_dir / "metrics").glob("*.json"))}
    path = run_dir / "metrics.json"
    atomic_write_json(path, merged)
    return path


def record_phase(run_dir, notebook: str, phase: str, seconds: float) -> None:
    """Add a named phase time (e.g. 'sft_train', 'grpo_generation') to `run_dir/phases.json`."""
    path = Path(run_dir) / "phases.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data.setdefault(notebook, {})[phase] = round(data.get(notebook, {}).get(phase, 0.0) + float(seconds), 3)
    atomic_write_json(path, data)


def discover_notebooks(notebooks_dir=DEFAULT_NOTEBOOKS) -> list[Path]:
    """Numbered notebooks `NN_name.ipynb`, in order."""
    found = sorted(p for p in Path(notebooks_dir).glob("[0-9][0-9]_*.ipynb"))
    if not found:
        raise FileNotFoundError(f"no numbered notebooks (NN_name.ipynb) in {notebooks_dir}")
    return found


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


def _fingerprint(nb: Path, params: dict) -> str:
    h = hashlib.sha256(nb.read_bytes())
    h.update(json.dumps(params, sort_keys=True).encode())
    return h.hexdigest()[:16]


class NotebookFailed(RuntimeError):
    pass


def run_chain(profile: str, run_dir, notebooks_dir=DEFAULT_NOTEBOOKS, force: bool = False,
              only: Optional[list[str]] = None, seed: int = 0, extra_params: Optional[dict] = None,
              publish_figures: Optional[str] = None, kernel_name: str = "python3", log=print,
              cell_timeout: Optional[int] = None) -> dict:
    """Execute the chain; returns the manifest. Raises NotebookFailed naming the notebook and cell.

    cell_timeout: seconds one cell may run (default: 900 for the smoke profile, unlimited otherwise),
    so a kernel that stops answering fails the chain with the cell named instead of hanging.
    """
    import papermill as pm

    run_dir = Path(run_dir).resolve()
    (run_dir / "executed").mkdir(parents=True, exist_ok=True)
    manifest_path = run_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    manifest.update(profile=profile, seed=seed, versions=versions(), git_commit=git_commit(),
                    run_dir=str(run_dir), started=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    manifest.setdefault("notebooks", {})
    notebooks = discover_notebooks(notebooks_dir)
    if only:
        notebooks = [nb for nb in notebooks if nb.name[:2] in only or nb.stem in only]
    params = dict(profile=profile, run_dir=str(run_dir), seed=seed, **(extra_params or {}))
    timeout = cell_timeout if cell_timeout is not None else (900 if profile == "smoke" else None)
    for k, nb in enumerate(notebooks, 1):
        fp = _fingerprint(nb, params)
        entry = manifest["notebooks"].get(nb.stem, {})
        if not force and entry.get("status") == "done" and entry.get("fingerprint") == fp:
            log(f"[{k}/{len(notebooks)}] {nb.stem}: done before with the same parameters, skipped")
            continue
        log(f"[{k}/{len(notebooks)}] {nb.stem}: running (profile={profile}) ...")
        manifest["notebooks"][nb.stem] = dict(status="running", fingerprint=fp)
        atomic_write_json(manifest_path, manifest)
        t0 = time.perf_counter()
        try:
            pm.execute_notebook(str(nb), str(run_dir / "executed" / nb.name), parameters=params,
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
                                 f"(executed copy: {run_dir / 'executed' / nb.name})") from None
        seconds = round(time.perf_counter() - t0, 2)
        manifest["notebooks"][nb.stem] = dict(status="done", fingerprint=fp, seconds=seconds,
                                              metrics=str(run_dir / "metrics" / f"{nb.stem}.json"))
        atomic_write_json(manifest_path, manifest)
        log(f"[{k}/{len(notebooks)}] {nb.stem}: done in {seconds:.1f} s")
    phases = run_dir / "phases.json"
    if phases.exists():
        manifest["phases"] = json.loads(phases.read_text())
    manifest["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    manifest["total_seconds"] = round(sum(e.get("seconds", 0) for e in manifest["notebooks"].values()), 2)
    atomic_write_json(manifest_path, manifest)
    collect_metrics(run_dir)
    if publish_figures and (run_dir / "figures").exists():
        dest = Path(publish_figures)
        dest.mkdir(parents=True, exist_ok=True)
        for f in (run_dir / "figures").glob("*.png"):
            shutil.copy2(f, dest / f.name)
        log(f"figures copied to {dest}")
    return manifest


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m zoomdx_lib.pipeline", description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="cpu", help="smoke | cpu | paper (default cpu)")
    ap.add_argument("--out", default=None, help="run folder (default runs/<profile>)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="re-run notebooks already done")
    ap.add_argument("--only", default=None, help="comma-separated notebook numbers, e.g. 01,02")
    ap.add_argument("--notebooks", default=str(DEFAULT_NOTEBOOKS), help="folder of numbered notebooks")
    ap.add_argument("--param", action="append", default=[], help="extra notebook parameter k=v (JSON value)")
    ap.add_argument("--publish-figures", default=None, help="copy the run's figures/*.png here")
    args = ap.parse_args(argv)
    extra = {}
    for kv in args.param:
        k, _, v = kv.partition("=")
        try:
            extra[k] = json.loads(v)
        except json.JSONDecodeError:
            extra[k] = v
    out = args.out or f"runs/{args.profile}"
    try:
        manifest = run_chain(args.profile, out, args.notebooks, args.force,
                             args.only.split(",") if args.only else None, args.seed, extra, args.publish_figures)
    except NotebookFailed as err:
        print(f"FAILED: {err}", file=sys.stderr)
        return 1
    print(f"chain finished in {manifest['total_seconds']:.1f} s; manifest: {Path(out) / 'manifest.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
