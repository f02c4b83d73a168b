"""House rules for the notebooks: committed without outputs, python3 kernel, a setup cell first.

The notebooks are executed by nbval in `make test`; this module checks how they are *stored*, which is
the README's promise (outputs come from your own run, never from the repository).
"""
import re
from pathlib import Path

import nbformat
import pytest

from csa_lib.config import NOTEBOOK_PROFILES, REPO_ROOT

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 2


#: How to clear them, in every failure message (JupyterLab's autosave stores outputs in the file).
HOW_TO_CLEAR = ("; clear the outputs with `make clean-notebooks` (or in JupyterLab: Edit > Clear Outputs of "
                "All Cells, then save)")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stored_without_outputs(path: Path):
    nb = nbformat.read(path, as_version=4)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3", f"{path.name}: kernelspec must be python3"
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.get("outputs", []) == [], f"{path.name} cell {i} has stored outputs" + HOW_TO_CLEAR
            assert cell.get("execution_count") is None, f"{path.name} cell {i} has an execution count" + HOW_TO_CLEAR


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_teaches_and_starts_with_setup(path: Path):
    nb = nbformat.read(path, as_version=4)
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown").lower()
    assert "what you will learn" in text, f"{path.name}: needs a 'What you will learn' section"
    assert "exercise" in text, f"{path.name}: needs exercises"
    first_code = next(c.source for c in nb.cells if c.cell_type == "code")
    assert "profile:" in first_code, f"{path.name}: first code cell must print the profile"


# --------------------------------------------------------------------------------------------------
# Teaching rules (issue 14): runtime line, answerable exercises, references that resolve
# --------------------------------------------------------------------------------------------------
#: (notebook, rule) pairs not yet met by work in progress, each an expected failure. Empty: every notebook
#: meets every rule. Strict: once a notebook meets the rule its entry must go.
PENDING: set = set()


def _cases(rule: str) -> list:
    return [pytest.param(p, id=p.name, marks=pytest.mark.xfail(strict=True, reason=f"{rule} pending"))
            if (p.name, rule) in PENDING else pytest.param(p, id=p.name) for p in NOTEBOOKS]


def _markdown(nb) -> str:
    return "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")


def _all_text(nb) -> str:
    return "\n".join(c.source for c in nb.cells)


@pytest.mark.parametrize("path", _cases("runtime"))
def test_title_cell_states_the_runtime_of_each_profile(path: Path):
    nb = nbformat.read(path, as_version=4)
    title = next(c.source for c in nb.cells if c.cell_type == "markdown")
    line = next((ln for ln in title.split("\n\n") if "**Runtime**" in ln), None)
    assert line is not None, f"{path.name}: the title cell needs a '**Runtime**' paragraph"
    for profile in ("smoke", "full"):
        assert profile in line, f"{path.name}: the runtime paragraph must name the {profile} profile"
    assert "RUNTIME_" not in title, f"{path.name}: an unfilled runtime placeholder"
    first_code = next(c.source for c in nb.cells if c.cell_type == "code")
    assert "notebook_profile()" in first_code and "DEVICE" in first_code, (
        f"{path.name}: the first code cell must take its profile from csa_lib.config.notebook_profile()")


def _exercises(text: str) -> list[str]:
    """The exercise blocks: from each '**Exercise N.**' to the next one (or the end of the section)."""
    section = text[text.lower().index("## exercises"):] if "## exercises" in text.lower() else ""
    return re.split(r"(?=\*\*Exercise \d+\.\*\*)", section)[1:]


@pytest.mark.parametrize("path", _cases("exercises"))
def test_every_exercise_has_a_hint_and_a_solution(path: Path):
    """Exercises are written '**Exercise N.** question', each followed by a collapsible
    '<details><summary>Hint</summary>...</details>' and '<details><summary>Solution</summary>...</details>'
    (code solutions as ```python blocks, run once by their author; see CONTRIBUTING)."""
    blocks = _exercises(_markdown(nbformat.read(path, as_version=4)))
    assert blocks, f"{path.name}: the '## Exercises' section needs '**Exercise N.**' items"
    for k, block in enumerate(blocks, 1):
        assert block.startswith(f"**Exercise {k}.**"), f"{path.name}: exercises must be numbered 1, 2, ...: {block[:40]!r}"
        for part in ("Hint", "Solution"):
            m = re.search(rf"<details><summary>{part}</summary>(.*?)</details>", block, flags=re.S)
            assert m and len(m.group(1).strip()) > 20, f"{path.name}: exercise {k} needs a non-empty {part}"


@pytest.mark.parametrize("path", _cases("predict"))
def test_exercises_include_one_to_predict_then_measure(path: Path):
    """Issue 23: at least one exercise asks the student to *predict* an outcome and then *measure* it (in
    the question itself, not only in its hint or solution)."""
    blocks = _exercises(_markdown(nbformat.read(path, as_version=4)))
    questions = [b.split("<details>", 1)[0] for b in blocks]
    assert any(re.search(r"\bpredict", q, re.I) and re.search(r"\bmeasure", q, re.I) for q in questions), (
        f"{path.name}: no exercise asks to predict, then measure")


@pytest.mark.parametrize("path", _cases("profiles"))
def test_profile_tables_name_every_profile(path: Path):
    """A size table looked up by profile (``{"smoke": ..., ...}[PROFILE]``) names every profile of
    ``config.NOTEBOOK_PROFILES``; otherwise ``CSA_PROFILE=class`` stops the notebook with a KeyError."""
    code = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
    for table in re.findall(r"\{[^{}]*\}\[PROFILE\]", code):
        missing = set(NOTEBOOK_PROFILES) - set(re.findall(r'"(\w+)"\s*:', table))
        assert not missing, f"{path.name}: {table.splitlines()[0][:60]}... has no entry for {sorted(missing)}"


def _slug(heading: str) -> str:
    """GitHub's anchor for a markdown heading: lower case, punctuation dropped, spaces -> hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


#: Paths that notebooks may name although they are not in the repository (they are made by a run).
_GENERATED = ("runs/", "build/", "/tmp/")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_references_point_to_things_that_exist(path: Path):
    nb = nbformat.read(path, as_version=4)
    text = _all_text(nb)
    assert "CSA_SPEC" not in text, f"{path.name}: cites CSA_SPEC, which is not in the repository (docs/method.md is)"
    # notebook N: a notebook with that number must exist
    numbers = {p.name[:2] for p in NOTEBOOKS}
    for n in re.findall(r"\bnotebooks? (\d\d)\b", text):
        assert n in numbers, f"{path.name}: refers to notebook {n}, which does not exist"
    # relative links and repository paths in the markdown
    md = _markdown(nb)
    for target in re.findall(r"\]\((\.\./[^)#\s]+)", md):
        assert (path.parent / target).resolve().exists(), f"{path.name}: link to a missing file {target}"
    for target, anchor in re.findall(r"\]\((\.\./[^)#\s]+\.md)#([\w-]+)\)", md):
        headings = re.findall(r"^#+ (.+)$", (path.parent / target).resolve().read_text(), flags=re.M)
        assert anchor in {_slug(h) for h in headings}, f"{path.name}: no heading for the anchor {target}#{anchor}"
    for target in re.findall(r"`?\b((?:docs|benchmarks|data|csa_lib|tests|notebooks)/[\w./-]+\.(?:md|py|ipynb|txt))", md):
        if not target.startswith(_GENERATED):
            assert (REPO_ROOT / target).exists(), f"{path.name}: names a missing file {target}"


def test_make_clean_notebooks_strips_outputs_and_nothing_else(tmp_path):
    """What JupyterLab's autosave adds (outputs, execution counts, run-time cell metadata) is removed, and
    the notebook is then byte for byte the committed one."""
    import json
    import shutil
    import subprocess
    import sys

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    src = REPO_ROOT / "notebooks" / "09_inpaint_your_own_photo.ipynb"
    nb = json.loads(src.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            cell.update(outputs=[{"output_type": "stream", "name": "stdout", "text": ["saved\n"]}], execution_count=7)
            cell["metadata"]["execution"] = {"iopub.status.busy": "2026-12-04T10:00:00Z"}
    dirty = tmp_path / src.name
    dirty.write_text(json.dumps(nb, indent=1) + "\n")
    # -o: the set-up stamps count as up to date (no pip install inside the test); PY: this interpreter.
    proc = subprocess.run(["make", "-s", "-o", ".venv/.setup-stamp", "-o", ".setup-stamp-active", "clean-notebooks",
                           f"NOTEBOOKS={dirty}", f"PY={sys.executable}"], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert dirty.read_bytes() == src.read_bytes()
