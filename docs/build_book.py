"""Build the notebooks into HTML pages with their outputs and figures: ``build/book/<notebook>.html`` and an
``index.html`` that links them (``make book``).

The notebooks are stored without outputs; this executes each one in a fresh kernel and renders the result
with nbconvert (figures are embedded in the pages, so ``build/book`` can be copied anywhere and opened in
a browser). The profile comes from the environment (notebook 00): ``make book`` sets ``CSA_SMOKE=1``,
which runs every notebook in seconds with tiny models, so the pages show every output but not what a
trained model does; ``CSA_PROFILE=laptop`` or ``full`` give the larger runs.

usage: python docs/build_book.py [--out build/book] [--timeout 1800] [NOTEBOOK ...]
       (default: every notebooks/*.ipynb; a cell that raises stops the build with the notebook's name)
"""
from __future__ import annotations

import argparse
import html
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbconvert import HTMLExporter

ROOT = Path(__file__).resolve().parent.parent


def title_of(nb: nbformat.NotebookNode, default: str) -> str:
    """The first markdown heading of the notebook (without the '#'), else ``default``."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("#"):
                    return line.lstrip("#").strip()
    return default


def execute(path: Path, timeout: int = 1800) -> nbformat.NotebookNode:
    """Run every cell of ``path`` in a fresh ``python3`` kernel started in the notebook's folder."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    try:
        client.execute()
    except Exception as e:  # CellExecutionError, timeouts, a dead kernel: one line naming the notebook
        first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise RuntimeError(f"{path.name} failed to execute: {first}") from e
    return nb


@contextmanager
def _inline_figures():
    """Kernels started inside draw with matplotlib's inline backend, whose figures become outputs.

    A kernel inherits MPLBACKEND; ``make test`` sets it to Agg, under which ``plt.show()`` displays
    nothing and the pages would have no figures."""
    old = os.environ.get("MPLBACKEND")
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MPLBACKEND", None)
        else:
            os.environ["MPLBACKEND"] = old


def write_index(pages: list[tuple[str, str, float]], out: Path, profile: str) -> Path:
    """``index.html``: one link per page, in notebook order, with the seconds each took to run."""
    items = "\n".join(f'    <li><a href="{html.escape(stem)}.html">{html.escape(title)}</a> '
                      f'<small>({seconds:.0f} s)</small></li>' for stem, title, seconds in pages)
    page = f"""<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>CSA inpainting: the notebooks</title>
<style>body {{ font-family: sans-serif; max-width: 48em; margin: 2em auto; line-height: 1.5 }}</style></head>
<body>
  <h1>Coherent Semantic Attention for image inpainting: the notebooks</h1>
  <p>Executed in the <b>{html.escape(profile)}</b> profile (see notebook 00); run times on the machine that
  built this page.</p>
  <ol start="0">
{items}
  </ol>
</body>
</html>
"""
    path = out / "index.html"
    path.write_text(page, encoding="utf-8")
    return path


def build(notebooks: list[Path], out: Path, timeout: int = 1800) -> list[tuple[str, str, float]]:
    """Execute and render ``notebooks`` into ``out``; returns ``(stem, title, seconds)`` per page."""
    sys.path.insert(0, str(ROOT))
    from csa_lib.config import notebook_profile

    out.mkdir(parents=True, exist_ok=True)
    exporter = HTMLExporter()
    pages = []
    for path in notebooks:
        t0 = time.time()
        with _inline_figures():
            nb = execute(path, timeout)
        title = title_of(nb, path.stem)
        body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": title}})
        (out / f"{path.stem}.html").write_text(body, encoding="utf-8")
        pages.append((path.stem, title, time.time() - t0))
        print(f"{path.name}: {pages[-1][2]:.0f} s -> {out / (path.stem + '.html')}", flush=True)
    write_index(pages, out, notebook_profile())
    return pages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/*.ipynb")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "book")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    args = parser.parse_args(argv)
    notebooks = args.notebooks or sorted((ROOT / "notebooks").glob("*.ipynb"))
    for nb in notebooks:
        if not nb.is_file():
            parser.error(f"notebook not found: {nb}")
    build([nb.resolve() for nb in notebooks], args.out, args.timeout)
    print(f"open {args.out / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
