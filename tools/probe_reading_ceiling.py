"""How well can the synthetic labels be read at all? Two ceilings per organ and attribute.

    python tools/probe_reading_ceiling.py                     # liver, breast, thyroid; 600 + 300/200 cases

- ``latent``: answering each case with the generator's TRUE class (what a reader that recovered the
  latent value exactly would answer) against the case's label. Labels are the two simulated raters'
  common reading when they agree (c = 1) and the true class otherwise, so rater noise caps every reader.
- ``mask`` (shape only): a standardised logistic regression (scikit-learn) on geometric features of the
  TRUE lesion mask (second-moment aspect, solidity, perimeter / sqrt(area), box aspect), fit on one seed and
  tested on another: what the drawn outline says about the shape class, with no speckle in the way.

Compare with what a model reads from the true crop, per attribute (the grounding command prints one line
per attribute: ``python -m zoomdx_lib.eval.grounding --organ breast --n 384 --seed SEED``) and with notebook
01's reference classifier on the image (docs/zoom_evidence.md).
"""
from __future__ import annotations

import argparse
import json
import zlib

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from zoomdx_lib.data.raters import simulate_raters
from zoomdx_lib.data.synth import generate_case, generate_samples
from zoomdx_lib.schema import ATTRIBUTE_LABELS, ATTRIBUTES


def latent_ceiling(organ: str, n: int, seed: int) -> dict:
    """{attribute: share of cases whose label equals the generator's true class}."""
    hits = {a: [] for a in ATTRIBUTES}
    for s, _ in generate_samples(organ, n, seed, 256):
        hits[s.attribute].append(s.meta["true_attributes"][s.attribute] == s.label)
    return {a: float(np.mean(v)) for a, v in hits.items()}


def mask_features(mask: np.ndarray, box) -> list[float]:
    ys, xs = np.nonzero(mask)
    ev = np.sort(np.linalg.eigvalsh(np.cov(np.stack([xs, ys]))))
    area = float(mask.sum())
    hull = ConvexHull(np.stack([xs, ys], 1)).volume
    perimeter = float((mask & ~ndimage.binary_erosion(mask)).sum())
    bw, bh = box[2] - box[0], box[3] - box[1]
    return [np.sqrt(ev[1] / ev[0]), area / hull, perimeter / np.sqrt(area), bw / bh, max(bw, bh) / min(bw, bh)]


def shape_cases(organ: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Mask features and labels of `n` shape cases (classes balanced, labels as the data splits write them)."""
    X, y, labels = [], [], ATTRIBUTE_LABELS["shape"]
    for i in range(n):
        ss = np.random.SeedSequence([seed, zlib.crc32(organ.encode()), i])
        case_seed, rater_seed = (int(s) for s in ss.generate_state(2))
        case = generate_case(case_seed, organ, 256, {"shape": labels[i % len(labels)]})
        ra, rb = simulate_raters(case, "shape", rater_seed)
        X.append(mask_features(case.mask, case.box))
        y.append(ra if ra == rb else case.attributes["shape"])
    return np.array(X), np.array(y)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--organs", default="liver,breast,thyroid")
    ap.add_argument("--n-latent", type=int, default=600)
    ap.add_argument("--n-train", type=int, default=300)
    ap.add_argument("--n-test", type=int, default=200)
    args = ap.parse_args()
    for organ in args.organs.split(","):
        Xtr, ytr = shape_cases(organ, args.n_train, 91)
        Xte, yte = shape_cases(organ, args.n_test, 92)
        reader = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(Xtr, ytr)
        print(json.dumps(dict(organ=organ, latent=latent_ceiling(organ, args.n_latent, 7801),
                              shape_from_mask=round(float(reader.score(Xte, yte)), 3),
                              shape_majority=round(max(float(np.mean(yte == c)) for c in set(yte)), 3))))


if __name__ == "__main__":
    main()
