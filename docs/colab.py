"""Write "Open in Colab" badges into the notebooks and the README for the repository's public address.

Colab opens a notebook straight from GitHub (``colab.research.google.com/github/OWNER/NAME/blob/BRANCH/
notebooks/NB.ipynb``), so a badge needs the repository's public address, which is not part of the
repository itself. Once it is known, one command writes everything (``make colab REPO=OWNER/NAME``):

- in each notebook's title cell, a badge line below the ``# Title`` heading;
- at the top of each notebook's first code cell, a block that runs only inside Colab: it clones the
  repository (the notebooks read ``data/`` and ``weights/`` from it), changes into it, installs
  ``csa_lib`` with the ``widgets`` extra (ipympl and ipycanvas for notebooks 08 and 09) with pip,
  keeping Colab's torch (``requirements.txt`` asks for ranges), and turns on Colab's manager for
  third-party widgets;
- in the README's notebook table, a badge per notebook, between ``<!-- colab -->`` markers.

Every insertion is marked, so running it again replaces the old badges (a new address or branch) and
``--remove`` takes them out again, leaving the files byte for byte as they were. Outside Colab the block
does nothing: the notebooks still run under ``make test``.

usage: python docs/colab.py OWNER/NAME [--branch main]      write or update the badges
       python docs/colab.py --remove                        take them out
       python docs/colab.py --check OWNER/NAME              exit 1 unless every badge is there and current

The branch must be a valid git branch name, and it is written quoted (a Python string literal in the
set-up block, percent-encoded in the addresses): a name like ``main",__import__("os")...`` is only a name.
"""
from __future__ import annotations

import argparse
import ast
import json
import re
import sys
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
BADGE_IMG = "https://colab.research.google.com/assets/colab-badge.svg"
TITLE_MARK = "<!-- colab badge -->"
CODE_BEGIN = "# --- Colab set-up (docs/colab.py): runs only inside Google Colab ---\n"
CODE_END = "# --- end of Colab set-up ---\n"
README_BEGIN, README_END = "<!-- colab -->", "<!-- /colab -->"
_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,38}/[A-Za-z0-9._-]{1,100}$")


def check_repo(repo: str) -> str:
    """``OWNER/NAME`` as GitHub spells it, or a ValueError naming the argument."""
    repo = repo.strip().removeprefix("https://github.com/").removesuffix(".git").strip("/")
    if not _REPO.match(repo):
        raise ValueError(f"repository {repo!r}: expected OWNER/NAME, e.g. octocat/csa-inpainting")
    return repo


#: What ``git check-ref-format --branch`` refuses: control characters, space, ``~ ^ : ? * [ \``, ``..``,
#: ``@{``, ``//``; a leading ``-`` or ``/``; a trailing ``/`` or ``.``; components starting with ``.`` or
#: ending in ``.lock``; the names ``@`` and ``HEAD``.
_BAD_REF = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|//|^[-/]|[/.]$|(^|/)\.|\.lock(/|$)|^@$|^HEAD$")


def check_branch(branch: str) -> str:
    """``branch`` when it is a valid git branch name (the rules of ``git check-ref-format --branch``),
    else a ValueError naming it. A valid name may still hold quotes, commas or parentheses
    (``main",__import__("os")...``): every use quotes it (:func:`py_str`, :func:`colab_url`)."""
    if not isinstance(branch, str) or not branch or _BAD_REF.search(branch):
        raise ValueError(f"branch {branch!r}: not a valid git branch name (git check-ref-format --branch)")
    return branch


def py_str(text: str) -> str:
    """A Python string literal that evaluates to exactly ``text`` (double-quoted, escaped)."""
    literal = json.dumps(text, ensure_ascii=False)
    if ast.literal_eval(literal) != text:  # never expected; refuse rather than write code we did not mean
        raise ValueError(f"cannot quote {text!r} as a Python string")
    return literal


def colab_url(repo: str, notebook: str, branch: str = "main") -> str:
    """The address at which Colab opens ``notebooks/<notebook>`` of ``repo`` on ``branch`` (the branch
    percent-encoded: a quote or parenthesis cannot end the Markdown link or the address)."""
    branch = quote(check_branch(branch), safe="/")
    return f"https://colab.research.google.com/github/{repo}/blob/{branch}/notebooks/{notebook}"


def badge(repo: str, notebook: str, branch: str = "main") -> str:
    return f"[![Open In Colab]({BADGE_IMG})]({colab_url(repo, notebook, branch)})"


def setup_block(repo: str, branch: str = "main") -> str:
    """Python that, inside Colab only, clones ``repo`` at ``branch``, changes into it, installs csa_lib with
    the notebooks' widgets and enables Colab's custom widget manager.

    The branch and the address are written as Python string literals (:func:`py_str`), so no branch name
    can end the string and run code."""
    branch, url = py_str(check_branch(branch)), py_str(f"https://github.com/{check_repo(repo)}")
    return (CODE_BEGIN
            + 'import os as _os, subprocess as _sp, sys as _sys\n'
            + 'if "google.colab" in _sys.modules and not _os.path.isdir("csa_lib"):\n'
            + '    if not _os.path.isdir("csa-inpainting"):\n'
            + f'        _sp.run(["git", "clone", "--depth", "1", "--branch", {branch},\n'
            + f'                 {url}, "csa-inpainting"], check=True)\n'
            + '    _os.chdir("csa-inpainting")  # the notebooks read data/ and weights/ from the repository\n'
            + '    _sys.path.insert(0, _os.getcwd())\n'
            + '    # csa_lib and the widgets of notebooks 08 and 09 (ipympl, ipycanvas); keeps Colab\'s torch\n'
            + '    _sp.run([_sys.executable, "-m", "pip", "install", "-q", "-e", ".[widgets]"], check=True)\n'
            + '    from google.colab import output as _output\n'
            + '    _output.enable_custom_widget_manager()  # Colab shows third-party widgets only with this\n'
            + CODE_END)


def _strip_title(src: str) -> str:
    """The title cell without the badge line and the blank line inserted before it."""
    lines = src.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if TITLE_MARK in line:
            return "".join(lines[:i - 1] + lines[i + 1:])
    return src


def _strip_code(src: str) -> str:
    start = src.find(CODE_BEGIN)
    if start < 0:
        return src
    end = src.index(CODE_END, start) + len(CODE_END)
    return src[:start] + src[end:]


def _first(cells: list, kind: str) -> dict:
    return next(c for c in cells if c["cell_type"] == kind)


def _source(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def _set_source(cell: dict, text: str) -> None:
    cell["source"] = text.splitlines(keepends=True)


def update_notebook(path: Path, repo: str | None, branch: str = "main") -> bool:
    """Put (``repo`` given) or take out (``repo=None``) the badge and the set-up block; True if changed."""
    raw = path.read_text(encoding="utf-8")
    nb = json.loads(raw)
    title, code = _first(nb["cells"], "markdown"), _first(nb["cells"], "code")
    t, c = _strip_title(_source(title)), _strip_code(_source(code))
    if repo is not None:
        lines = t.splitlines(keepends=True)
        at = next((i + 1 for i, line in enumerate(lines) if line.startswith("# ")), None)
        if at is None:
            raise ValueError(f"{path}: the title cell has no '# ' heading to put the Colab badge under")
        if not lines[at - 1].endswith("\n"):
            lines[at - 1] += "\n"
        lines[at:at] = ["\n", f"{badge(repo, path.name, branch)} {TITLE_MARK}\n"]
        t = "".join(lines)
        c = setup_block(repo, branch) + c
    _set_source(title, t)
    _set_source(code, c)
    # The notebooks are stored as nbformat writes them (1-space indent, a final newline).
    new = json.dumps(nb, indent=1, ensure_ascii=False) + "\n"
    if new != raw:
        path.write_text(new, encoding="utf-8")
        return True
    return False


def update_readme(path: Path, notebooks: list[Path], repo: str | None, branch: str = "main") -> bool:
    """Put or take out the README's block of badges (after the notebook table); True if changed."""
    text = path.read_text(encoding="utf-8")
    new = text
    start = text.find("\n" + README_BEGIN)
    if start >= 0:  # exactly what the insertion below added
        end = text.index(README_END, start) + len(README_END) + 1
        new = text[:start] + text[end:]
    if repo is not None:
        anchor = new.find("## Notebooks")
        if anchor < 0:
            raise ValueError(f"{path}: no '## Notebooks' section to put the Colab badges in")
        # after the table: the first blank line following the table's first row
        table = new.find("\n|", anchor)
        cut = new.find("\n\n", table)
        cut = len(new) if cut < 0 else cut + 1
        rows = "\n".join(f"- {badge(repo, nb.name, branch)} `{nb.stem}`" for nb in notebooks)
        block = (f"\n{README_BEGIN}\nOpen a notebook in Google Colab (its first cell clones this repository and "
                 f"installs `csa_lib` there):\n\n{rows}\n{README_END}\n")
        new = new[:cut] + block + new[cut:]
    if new != text:
        path.write_text(new, encoding="utf-8")
        return True
    return False


def notebooks_in(root: Path) -> list[Path]:
    return sorted((root / "notebooks").glob("*.ipynb"))


def check(root: Path, repo: str, branch: str = "main") -> list[str]:
    """What is missing or stale for ``repo`` (empty when every badge and block is current)."""
    problems = []
    for path in notebooks_in(root):
        nb = json.loads(path.read_text(encoding="utf-8"))
        if badge(repo, path.name, branch) not in _source(_first(nb["cells"], "markdown")):
            problems.append(f"{path.name}: no current Colab badge in the title cell")
        if not _source(_first(nb["cells"], "code")).startswith(setup_block(repo, branch)):
            problems.append(f"{path.name}: the first code cell does not start with the current Colab set-up")
    readme = (root / "README.md").read_text(encoding="utf-8")
    for path in notebooks_in(root):
        if badge(repo, path.name, branch) not in readme:
            problems.append(f"README.md: no current Colab badge for {path.name}")
    return problems


def main(argv: list[str] | None = None, root: Path = ROOT) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("repo", nargs="?", help="the public GitHub repository, OWNER/NAME")
    ap.add_argument("--branch", default="main")
    ap.add_argument("--remove", action="store_true", help="take the badges and set-up blocks out")
    ap.add_argument("--check", action="store_true", help="only check that they are there and current")
    args = ap.parse_args(argv)
    if args.remove == bool(args.repo):
        ap.error("give OWNER/NAME, or --remove (without a repository)")
    try:
        check_branch(args.branch)
        repo = None if args.remove else check_repo(args.repo)
        if args.check:
            problems = check(root, repo, args.branch)
            for p in problems:
                print(p, file=sys.stderr)
            return 1 if problems else 0
        notebooks = notebooks_in(root)
        changed = [p.name for p in notebooks if update_notebook(p, repo, args.branch)]
        if update_readme(root / "README.md", notebooks, repo, args.branch):
            changed.append("README.md")
    except (ValueError, OSError) as e:
        print(f"colab: {e}", file=sys.stderr)
        return 2
    print(f"colab: {'removed from' if args.remove else 'wrote'} {len(changed)} file(s)"
          + (f": {', '.join(changed)}" if changed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
