"""Files that survive a kill, JSONL tables, and progress bars: the workbook's only ways to write.

Every file is written to a temporary name in its own folder, flushed to disk and moved into place
with ``os.replace``, so a killed run leaves either the old complete file or the new complete one.
"""
from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from tqdm.auto import tqdm


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write `data` to `path` through a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path, text: str) -> Path:
    """UTF-8 text through :func:`atomic_write_bytes`."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj) -> Path:
    """Indented JSON (non-JSON values written with ``str``) through :func:`atomic_write_text`."""
    return atomic_write_text(path, json.dumps(obj, indent=2, default=str))


def save_png(image, path) -> Path:
    """A PIL image as PNG through :func:`atomic_write_bytes`."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())


def jsonl_text(rows: Iterable[dict]) -> str:
    """One JSON object per line (keys in insertion order)."""
    return "".join(json.dumps(r) + "\n" for r in rows)


def write_jsonl(path, rows: Iterable[dict]) -> Path:
    """All `rows` as a JSONL file, atomically."""
    return atomic_write_text(path, jsonl_text(rows))


def append_jsonl(path, row: dict) -> None:
    """Append one row to a JSONL log (a log may lose its last line to a kill, never an earlier one)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def read_jsonl(path) -> list[dict]:
    """The objects of a JSONL file, skipping blank lines."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def progress(iterable, enabled: bool = True, **kwargs) -> Iterator:
    """`iterable` under a tqdm bar (notebook or terminal); a silent bar when not `enabled`.

    The returned object always has ``set_postfix``, so callers never branch on `enabled`.
    """
    return tqdm(iterable, disable=not enabled, **kwargs)
