"""The RL study: the paper's RL claims decided over several seeds on fresh cases, with their power.

``python -m zoomdx_lib.workbook.rl_study --out runs/rl_study --seeds 0,1,2`` (``make rl-study``). Per seed:
one zoom SFT start (the cpu profile's data and SFT recipe at that seed), then three GRPO arms from it —
accuracy-only, uncertainty with the credit estimator, and the paper-literal uncertainty-group — each for
the study's steps with the study's recipe (:data:`STUDY_RECIPE`); then the SFT start and the arms are
evaluated on fresh cases (``--n-eval`` per organ: liver, breast and the zero-shot thyroid; greedy for
Acc / mIoU, 8 sampled rollouts for SAcc / Align / ECE / Gap), and turn 2 is re-answered from other crops
(:mod:`zoomdx_lib.eval.crop_use`). The claims are pooled over seeds with
:func:`zoomdx_lib.eval.claims.claims_over_runs`, each with its interval's half-width, the smallest effect
the study could detect and the cases it would need to decide (:func:`power_row`).

Every arm resumes from its checkpoints and every evaluation is cached, so a killed study continues where
it stopped (``nohup make rl-study &`` runs it in the background); ``summary.json``, ``claims.md`` and
``crop_use.csv`` and ``methods.csv`` / ``.md`` (each method's metrics per seed and organ) are rewritten after
each seed, so a partial study can be read. A finished seed is also kept
compact in ``seeds/seedS.json.gz`` (its evaluation records without the generated texts, curves, crop use),
which is all the pooling reads: a copy of the study folder's small files continues on another machine,
and a seed whose file is there is not run again (when its base, recipe and sizes match).
"""
from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from ..config import Profile, get_profile, parse_key_values
from ..data.fresh import fresh_items
from ..eval.claims import CLAIMS, claims_over_runs
from ..eval.crop_use import crop_use_rows
from ..eval.generate import Method, evaluate_methods, weights_digest
from ..eval.power import DECIDE_HALF_WIDTH, MIN_CASES, decided_claim, power_row, seed_interval  # noqa: F401
from ..eval.scores import calibration_from_table, calibration_table, greedy_metrics
from ..io import atomic_write_bytes, atomic_write_json, atomic_write_text, progress as progress_bar
from ..train.loop import read_log
from .rl_controls import grpo_from_start, sft_start
from .rl_study_report import study_report
from .seed_pool import map_seeds
from .viz_rl import curve_points

# arm name (as the claims name the methods) -> (reward variant, advantage estimator)
ARMS = {"grpo_accuracy_only": ("accuracy_only", "credit"),
        "grpo_uncertainty_credit": ("uncertainty", "credit"),
        "grpo_uncertainty_group": ("uncertainty", "group")}
ORGANS = ("liver", "breast", "thyroid")
RL_CLAIMS = tuple(c for c in CLAIMS if c.worse != "single_turn_sft")
# The recipe the positive controls chose (docs/rl.md): several clipped passes per batch of rollouts,
# a larger learning rate held by a KL to the SFT policy, and refilled groups with no signal.
STUDY_RECIPE = dict(grpo__steps=60, grpo__lr=3e-4, grpo__ppo_epochs=2, grpo__beta=0.04, grpo__refill_rounds=1)


def train_arm(name: str, profile: Profile, start: dict, seed_dir: Path, progress: bool = True) -> str:
    """Train one GRPO arm from the SFT start (resumable); returns its adapter folder."""
    variant, estimator = ARMS[name]
    adapter = seed_dir / "models" / name
    grpo_from_start(profile, start, dataclasses.replace(profile.grpo, estimator=estimator),
                    seed_dir / "checkpoints" / name, adapter, variant, progress=progress)
    return str(adapter)


def flatness(log: Sequence[dict], key: str = "reward_total") -> dict:
    """Mean of `key` over the third and the last quarter of a curve and their difference: a curve has
    flattened when the last quarter gains little over the third."""
    r = np.array([row[key] for row in log], float)
    q = np.array_split(r, 4) if r.size >= 4 else [r] * 4
    return dict(q3=float(q[2].mean()), q4=float(q[3].mean()), gain_q4_vs_q3=float(q[3].mean() - q[2].mean()))


def study_datasets(profile: Profile, n_eval: int) -> dict:
    """{"test_liver" | "test_breast" | "test_thyroid": fresh cases} for one seed's profile."""
    return {f"test_{o}": fresh_items(profile, [o], n_eval, "rl_study") for o in ORGANS}


def run_seed(seed: int, out_dir, overrides: dict, n_eval: int, n_crop: int, progress: bool = True,
             profile_name: str = "cpu") -> dict:
    """One seed of the study: SFT start, the three arms, evaluations; returns {results, eval_seed, curves,
    crop_use, seconds}. `seconds` adds up the wall time of every pass over this seed that reached its end
    (kept in ``seedS/seconds.json``); the time of a killed pass is lost."""
    t0 = time.perf_counter()
    profile = get_profile(profile_name, seed=seed, **overrides)
    identity = seed_identity(profile, profile_name, overrides, n_eval, n_crop)
    kept = seed_result_path(out_dir, seed)
    if kept.exists():
        return read_seed_result(kept, identity)
    seed_dir = Path(out_dir) / f"seed{seed}"
    start = sft_start(profile, seed_dir, progress=progress)
    methods = [Method("zoom_sft", "zoom", start["base"], start["adapter"])]
    for name in progress_bar(ARMS, progress, desc=f"seed {seed}: arms"):
        methods.append(Method(name, "zoom", start["base"], train_arm(name, profile, start, seed_dir, progress)))
    datasets = study_datasets(profile, n_eval)
    eval_seed = 1000 + seed
    results = evaluate_methods(methods, datasets, profile, seed_dir / "generations", modes=("greedy", "sample"),
                               seeds=(eval_seed,), progress=progress)
    curves = {name: read_log(seed_dir / "checkpoints" / name) for name in ARMS}
    rows = crop_use_rows(methods, datasets, profile, seed_dir / f"crop_use_{n_crop}.json", n_crop, progress)
    seconds = add_seconds(seed_dir / "seconds.json", time.perf_counter() - t0)
    out = dict(results=results, eval_seed=eval_seed, curves=curves, crop_use=rows, seconds=seconds, identity=identity)
    write_seed_result(kept, out, identity)
    return out


def seed_identity(profile: Profile, profile_name: str, overrides: dict, n_eval: int, n_crop: int) -> dict:
    """What a seed's results depend on: the base's weights, the profile, the recipe, the seed and the sizes."""
    return dict(base=weights_digest(profile.model.path) if profile.model.path else None, profile=profile_name,
                seed=profile.seed, overrides={k: overrides[k] for k in sorted(overrides)}, n_eval=n_eval, n_crop=n_crop)


KEPT_FIELDS = ("eval_seed", "curves", "crop_use", "seconds")   # kept beside a seed's records and identity


def seed_result_path(out_dir, seed: int) -> Path:
    return Path(out_dir) / "seeds" / f"seed{seed}.json.gz"


def write_seed_result(path, result: dict, identity: dict) -> Path:
    """Keep one finished seed compact: its records without the generated texts (the pooling reads answers,
    boxes and scores), curves, crop use and seconds, gzipped, under the `identity` that made it."""
    slim = {"/".join(map(str, key)): [dict(r, rollouts=[{k: v for k, v in ro.items() if k not in ("turn1", "turn2")}
                                                          for ro in r["rollouts"]]) for r in recs]
            for key, recs in result["results"].items()}
    body = dict(identity=identity, results=slim, **{k: result[k] for k in KEPT_FIELDS})
    return atomic_write_bytes(path, gzip.compress(json.dumps(body, default=_plain).encode(), mtime=0))


def _plain(value):
    """numpy scalars and arrays as JSON values."""
    return value.tolist() if hasattr(value, "tolist") else str(value)


def read_seed_result(path, identity: Optional[dict] = None) -> dict:
    """A seed kept by :func:`write_seed_result`, as :func:`run_seed` returns it. With `identity`, a file made
    under another base, recipe or size is refused (ValueError naming what differs)."""
    body = json.loads(gzip.decompress(Path(path).read_bytes()))
    if identity is not None and body["identity"] != identity:
        differ = sorted(k for k in set(identity) | set(body["identity"]) if identity.get(k) != body["identity"].get(k))
        raise ValueError(f"{path}: this seed was run with other {', '.join(differ)} "
                         f"({ {k: body['identity'].get(k) for k in differ} } vs { {k: identity.get(k) for k in differ} }); "
                         "use another --out, or remove the file to run the seed again")
    results = {}
    for key, recs in body["results"].items():
        method, dataset, mode, seed = key.split("/")
        results[(method, dataset, mode, int(seed))] = recs
    return dict(results=results, identity=body["identity"], **{k: body[k] for k in KEPT_FIELDS})


def add_seconds(path, seconds: float) -> float:
    """Add one finished pass's wall time to the running total kept at `path`; returns the new total.

    >>> import tempfile, os; p = os.path.join(tempfile.mkdtemp(), "seconds.json")
    >>> add_seconds(p, 2.5), add_seconds(p, 1.0)
    (2.5, 3.5)
    """
    path = Path(path)
    before = json.loads(path.read_text())["seconds"] if path.exists() else 0.0
    atomic_write_json(path, dict(seconds=before + seconds))
    return before + seconds


def summarise(seeds: dict, out_dir, n_boot: int = 1000) -> dict:
    """Pool the finished seeds: claims with power, crop use and curves' flatness, written to `out_dir`
    (claims.md / claims.csv, crop_use.csv, methods.csv / .md, summary.json, and the results page report.md).
    Returns the summary dict."""
    out_dir = Path(out_dir)
    runs = {f"seed{s}": (r["results"], r["eval_seed"]) for s, r in seeds.items()}
    datasets = [f"test_{o}" for o in ORGANS]
    rows = [dict(r, **power_row(r), **seed_interval(r["per_run"]))
            for r in claims_over_runs(runs, datasets, n_boot=n_boot, claims=RL_CLAIMS) if r["verdict"] != "not measured"]
    for r in rows:
        r["decided"] = decided_claim(r, r["half_width"])
    claims = pd.DataFrame(rows)
    cols = ["claim", "dataset", "metric", "better", "worse", "runs", "n", "delta", "low", "high", "per_run", "agree", "verdict",
            "half_width", "min_detectable", "n_to_decide", "decided", "seed_low", "seed_high", "seed_sign"]
    atomic_write_text(out_dir / "claims.md", claims[cols].round(3).to_markdown(index=False) + "\n")
    claims[cols].to_csv(out_dir / "claims.csv", index=False)
    crop = pd.DataFrame([dict(seed=s, **row) for s, r in seeds.items() for row in r["crop_use"]])
    crop.to_csv(out_dir / "crop_use.csv", index=False)
    methods = pd.DataFrame(method_rows(seeds))
    methods.to_csv(out_dir / "methods.csv", index=False)
    mean = methods.drop(columns="seed").groupby(["method", "dataset"], sort=False).mean().reset_index()
    atomic_write_text(out_dir / "methods.md", mean.round(3).to_markdown(index=False) + "\n")
    summary = dict(seeds=sorted(seeds), claims=rows, crop_use=crop.to_dict("records"),
                   flatness={f"seed{s}/{a}": flatness(log) for s, r in seeds.items() for a, log in r["curves"].items()},
                   seconds={f"seed{s}": r["seconds"] for s, r in seeds.items()},
                   bases=sorted({str(r.get("identity", {}).get("base")) for r in seeds.values()}),   # weights digests
                   decided=int(sum(r["decided"] for r in rows)), claims_total=len(rows))
    atomic_write_json(out_dir / "summary.json", summary)
    atomic_write_json(out_dir / "curves.json", {f"seed{s}/{a}": curve_points(log)
                                               for s, r in seeds.items() for a, log in r["curves"].items()})
    # the page from the frames in hand, not from the files just written (curves.json is the largest of them)
    setup = json.loads((out_dir / "study.json").read_text()) if (out_dir / "study.json").exists() else {}
    atomic_write_text(out_dir / "report.md", study_report(dict(study=setup, summary=summary, claims=claims[cols],
                                                               crop_use=crop, methods=methods)))
    return summary


def method_rows(seeds: dict) -> list[dict]:
    """Per seed, method and organ: Acc and mIoU (greedy, c = 1), SAcc, Align, ECE and Gap (8 rollouts), and the
    mean kappa beside the consensus answer's accuracy (kappa above it: overconfident)."""
    rows = {}
    for s, r in seeds.items():
        for (method, dataset, mode, _), recs in r["results"].items():
            row = rows.setdefault((s, method, dataset), dict(seed=s, method=method, dataset=dataset))
            if mode == "greedy":
                m = greedy_metrics(recs)
                row.update(acc=m["acc"], miou_c1=m["miou_c1"])
            else:
                t = calibration_table(recs)
                m = calibration_from_table(t)
                row.update({k: m[k] for k in ("sacc", "align", "ece10", "gap")})
                # mean confidence against the consensus answer's accuracy: which side of ECE a method is on
                row.update(kappa=float(t["kappa"].mean()), consensus_acc=float(t["correct"].mean()))
    return list(rows.values())


def run_study(out_dir, seeds: Sequence[int] = (0, 1, 2), overrides: Optional[dict] = None, n_eval: int = 120,
              n_crop: int = 60, progress: bool = True, profile_name: str = "cpu", jobs: int = 1) -> dict:
    """Every seed (resumable), summarised after each seed trained here; returns the final summary. `overrides`
    go on top of :data:`STUDY_RECIPE` and the profile (`profile_name`, "cpu" by default; notebook 06's smoke run
    uses "smoke" with one GRPO step to check the plumbing). With `jobs` > 1 the seeds not yet kept are first
    run side by side in that many worker processes (:func:`~zoomdx_lib.workbook.seed_pool.map_seeds`), then
    pooled once."""
    overrides = dict(STUDY_RECIPE, **(overrides or {}))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "study.json", dict(seeds=list(seeds), profile=profile_name, overrides=overrides,
                                                   n_eval=n_eval, n_crop=n_crop))
    if jobs > 1:
        missing = [s for s in seeds if not seed_result_path(out_dir, s).exists()]
        map_seeds(train_seed, missing, jobs, progress, desc="study seeds", out_dir=str(out_dir), overrides=overrides,
                  n_eval=n_eval, n_crop=n_crop, profile_name=profile_name)
    done, summary = {}, {}
    for seed in seeds:
        kept = seed_result_path(out_dir, seed).exists()
        done[seed] = run_seed(seed, out_dir, overrides, n_eval, n_crop, progress, profile_name)
        # pooling takes about 30 s a seed: kept seeds are pooled once, with the last one
        if seed == seeds[-1] or not kept:
            summary = summarise(done, out_dir)
    return summary


def train_seed(seed: int, out_dir, overrides: dict, n_eval: int, n_crop: int, profile_name: str) -> float:
    """One seed run to its kept file, without progress bars, for a worker process; returns its seconds."""
    return run_seed(seed, out_dir, overrides, n_eval, n_crop, False, profile_name)["seconds"]


STUDY_FILES = ("study.json", "summary.json", "claims.md", "claims.csv", "crop_use.csv", "curves.json", "methods.csv",
               "methods.md", "report.md")


def publish_study(out_dir, dest) -> list[Path]:
    """Copy a study folder's small outputs (:data:`STUDY_FILES` and ``seeds/``, about 0.3 MB per seed) to
    `dest`, e.g. a folder kept under version control; a copy of `dest` back into a study folder continues
    the study there. Returns the files written."""
    out_dir, dest = Path(out_dir), Path(dest)
    files = [out_dir / f for f in STUDY_FILES if (out_dir / f).exists()] + sorted((out_dir / "seeds").glob("seed*.json.gz"))
    return [atomic_write_bytes(dest / f.relative_to(out_dir), f.read_bytes()) for f in files]


def load_study(folder) -> dict:
    """What a study folder (or its committed copy) holds: {study, summary, claims, crop_use, methods
    (DataFrames), curves {seedS/arm: log rows}}; missing parts are empty."""
    folder = Path(folder)
    read = lambda name: json.loads((folder / name).read_text()) if (folder / name).exists() else {}  # noqa: E731
    frame = lambda name: pd.read_csv(folder / name) if (folder / name).exists() else pd.DataFrame()  # noqa: E731
    return dict(study=read("study.json"), summary=read("summary.json"), claims=frame("claims.csv"),
                crop_use=frame("crop_use.csv"), methods=frame("methods.csv"), curves=read("curves.json"))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/rl_study")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated chain seeds")
    ap.add_argument("--n-eval", type=int, default=120, help="fresh cases per organ (liver, breast, thyroid)")
    ap.add_argument("--n-crop", type=int, default=60, help="cases per training organ for the crop-use check")
    ap.add_argument("--set", nargs="*", default=[], metavar="stage__field=value",
                    help=f"profile overrides on top of the study recipe {STUDY_RECIPE}")
    ap.add_argument("--profile", default="cpu", help="the profile under the study recipe (cpu; smoke to check plumbing)")
    ap.add_argument("--publish", metavar="DIR", help="copy the small outputs and the kept seeds to DIR at the end")
    ap.add_argument("--jobs", type=int, default=1,
                    help="seeds run side by side in this many worker processes sharing the cores (2 on 2 cores: 0.76x the time per seed)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    summary = run_study(args.out, [int(s) for s in args.seeds.split(",")], parse_key_values(args.set), args.n_eval,
                        args.n_crop, progress=not args.no_progress, profile_name=args.profile, jobs=args.jobs)
    if args.publish:
        publish_study(args.out, args.publish)
    print(json.dumps({k: summary[k] for k in ("seeds", "decided", "claims_total", "seconds")}))


if __name__ == "__main__":
    main()
