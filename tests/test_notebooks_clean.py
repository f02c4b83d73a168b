"""House rules for the notebooks: committed without outputs, python3 kernel, a setup cell first.

The notebooks are executed by nbval in `make test`; this module checks how they are *stored*, which is
the README's promise (outputs come from your own run, never from the repository).
"""
from pathlib import Path

import nbformat
import pytest

from csa_lib.config import REPO_ROOT

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 2


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stored_without_outputs(path: Path):
    nb = nbformat.read(path, as_version=4)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3", f"{path.name}: kernelspec must be python3"
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.get("outputs", []) == [], f"{path.name} cell {i} has stored outputs"
            assert cell.get("execution_count") is None, f"{path.name} cell {i} has an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_teaches_and_starts_with_setup(path: Path):
    nb = nbformat.read(path, as_version=4)
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown").lower()
    assert "what you will learn" in text, f"{path.name}: needs a 'What you will learn' section"
    assert "exercise" in text, f"{path.name}: needs exercises"
    first_code = next(c.source for c in nb.cells if c.cell_type == "code")
    assert "profile:" in first_code and "smoke_mode" in first_code, f"{path.name}: first code cell must print the profile"
