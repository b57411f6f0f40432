"""Every docstring example in the library runs and gives the output it shows."""
import doctest
import importlib
import importlib.util
import pkgutil
from pathlib import Path

import pytest

import zoomdx_lib


def _modules_with_examples() -> list[str]:
    """The library's modules whose source holds a '>>>' example (found without importing them)."""
    names = sorted(m.name for m in pkgutil.walk_packages(zoomdx_lib.__path__, "zoomdx_lib."))
    return [n for n in names if ">>>" in Path(importlib.util.find_spec(n).origin).read_text()]


MODULES = _modules_with_examples()


def test_there_are_examples_to_run():
    assert MODULES, "no module of zoomdx_lib has a '>>>' example"


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has '>>>' in its source but doctest found no example in a docstring"
    assert result.failed == 0, f"{result.failed} of {result.attempted} doctest examples failed in {name}"
