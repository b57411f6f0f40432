"""Every docstring example in the library runs and gives the output it shows."""
import doctest
import importlib
import pkgutil

import pytest

import zoomdx_lib

MODULES = sorted(m.name for m in pkgutil.walk_packages(zoomdx_lib.__path__, "zoomdx_lib."))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} of {result.attempted} doctest examples failed in {name}"
