"""Tiny helper used by `tools/make_notebooks.py`: build a notebook from (kind, source) cells."""
import hashlib

import nbformat


def build(cells, path):
    nb = nbformat.v4.new_notebook()
    out = []
    for kind, src in cells:
        src = src.strip("\n")
        if kind == "md":
            out.append(nbformat.v4.new_markdown_cell(src))
        else:
            cell = nbformat.v4.new_code_cell(src)
            if kind == "params":
                cell.metadata["tags"] = ["parameters"]
            out.append(cell)
    for i, cell in enumerate(out):  # stable ids: regenerating an unchanged notebook changes nothing
        cell.id = hashlib.sha1(f"{path.name if hasattr(path, 'name') else path}:{i}:{cell.source}".encode()).hexdigest()[:8]
    nb.cells = out
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nbformat.write(nb, str(path))
