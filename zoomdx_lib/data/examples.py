"""Small example data sets in the real layouts, made of synthetic images: to try the commands before bringing data.

    python -m zoomdx_lib.data.examples --out data/example

writes ``data/example/manifest/cases.csv`` (+ ``images/``) and a BUS-BRA-shaped folder
``data/example/bus_bra/`` (``bus_data.csv``, ``5-fold-cv.csv``, ``Images/``, ``Masks/``); then, for
instance, ``python -m zoomdx_lib.eval.grounding --data manifest:example/manifest/cases.csv`` (with
``ZOOMDX_DATA=data``). Images come from the synthetic generator at several sizes (so boxes differ in
pixels and in fractions of the image), every other one stretched to a non-square shape; boxes
are in original-image pixels. The tests build their data with these functions.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from ..io import atomic_write_text, save_png
from .synth import generate_samples

SIZES = ((128, 128), (160, 120), (96, 96), (120, 150))   # (width, height) of the example images, in turn


def example_cases(n: int, seed: int = 0, organ: str = "breast", attributes=("echo", "shape", "margin")):
    """`n` (sample, grayscale image) pairs from the generator, image k resized to ``SIZES[k % 4]``
    with its box scaled alike (original-image pixels, rounded to whole pixels)."""
    out = []
    for k, (s, im) in enumerate(generate_samples(organ, n, seed=seed, size=128, attributes=attributes)):
        w, h = SIZES[k % len(SIZES)]
        sx, sy = w / im.width, h / im.height
        x1, y1, x2, y2 = s.box
        s.box = (float(np.floor(x1 * sx)), float(np.floor(y1 * sy)), float(np.ceil(x2 * sx)), float(np.ceil(y2 * sy)))
        s.image_size = (w, h)
        out.append((s, im.resize((w, h))))
    return out


def _write_csv(path: Path, columns, rows) -> Path:
    lines = [",".join(columns)] + [",".join(_cell(r[c]) for c in columns) for r in rows]
    return atomic_write_text(path, "\n".join(lines) + "\n")


def _cell(v) -> str:
    text = str(v)
    return f'"{text}"' if ("," in text or '"' in text) else text


def write_manifest(folder, n: int = 12, seed: int = 0, patients: bool = True) -> Path:
    """A manifest ``folder/cases.csv`` of `n` cases (images in ``folder/images/``; columns id, image,
    x1..y2, attribute, label, c, organ, and patient: two cases per patient when `patients`). Returns its path."""
    folder = Path(folder)
    rows = []
    for k, (s, im) in enumerate(example_cases(n, seed)):
        save_png(im, folder / "images" / f"{s.id}.png")
        rows.append(dict(id=s.id, image=f"images/{s.id}.png", x1=s.box[0], y1=s.box[1], x2=s.box[2], y2=s.box[3],
                         attribute=s.attribute, label=s.label, c=s.c, organ=s.organ, patient=f"p{k // 2}"))
    columns = ["id", "image", "x1", "y1", "x2", "y2", "attribute", "label", "c", "organ"] + (["patient"] if patients else [])
    return _write_csv(folder / "cases.csv", columns, rows)


def write_bus_bra(folder, n: int = 12, seed: int = 0, folds: int = 3) -> Path:
    """A BUS-BRA-shaped folder of `n` margin cases: ``bus_data.csv`` (ID, Case, Histology, Pathology,
    BIRADS, Device), ``5-fold-cv.csv`` (ID, Pathology, kFold), ``Images/bus_NNNN-x.png`` and
    ``Masks/mask_NNNN-x.png`` (the box filled). Two images (left, right) per patient; patient p is in
    fold ``1 + p % folds``; pathology follows the margin label (the importer's proxy). Returns `folder`."""
    folder = Path(folder)
    data, kfold = [], []
    for k, (s, im) in enumerate(example_cases(n, seed, attributes=("margin",))):
        patient, side = k // 2 + 1, "lr"[k % 2]
        rid = f"bus_{patient:04d}-{side}"
        path = "benign" if s.label == "Circumscribed" else "malignant"
        save_png(im, folder / "Images" / f"{rid}.png")
        mask = np.zeros((im.height, im.width), np.uint8)
        x1, y1, x2, y2 = (int(v) for v in s.box)
        mask[y1:y2, x1:x2] = 255
        save_png(Image.fromarray(mask), folder / "Masks" / f"mask_{patient:04d}-{side}.png")
        data.append(dict(ID=rid, Case=patient, Histology="example", Pathology=path,
                         BIRADS=3 if path == "benign" else 5, Device="synthetic"))
        kfold.append(dict(ID=rid, Pathology=path, kFold=1 + (patient - 1) % folds))
    _write_csv(folder / "bus_data.csv", ["ID", "Case", "Histology", "Pathology", "BIRADS", "Device"], data)
    _write_csv(folder / "5-fold-cv.csv", ["ID", "Pathology", "kFold"], kfold)
    return folder


def main(argv: Optional[list] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m zoomdx_lib.data.examples", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="data/example", help="folder to write manifest/ and bus_bra/ into")
    ap.add_argument("--n", type=int, default=24, help="cases per example data set (default 24)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    out = Path(args.out)
    print(write_manifest(out / "manifest", args.n, args.seed))
    print(write_bus_bra(out / "bus_bra", args.n, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
