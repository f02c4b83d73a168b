"""`make book` must keep working: build one notebook into HTML and check the page has its outputs and figures."""
import importlib.util
import re

import pytest

from csa_lib.config import REPO_ROOT

spec = importlib.util.spec_from_file_location("build_book", REPO_ROOT / "docs" / "build_book.py")
build_book = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build_book)


@pytest.mark.slow
def test_book_page_has_outputs_and_figures(tmp_path, monkeypatch):
    monkeypatch.setenv("CSA_SMOKE", "1")      # the kernel inherits the environment
    monkeypatch.setenv("MPLBACKEND", "Agg")   # as make test sets it: the book must still get its figures
    notebook = REPO_ROOT / "notebooks" / "00_overview_and_data.ipynb"
    pages = build_book.build([notebook], tmp_path)
    assert [p[0] for p in pages] == [notebook.stem]
    page = (tmp_path / f"{notebook.stem}.html").read_text(encoding="utf-8")
    assert "profile: smoke" in page                                   # the first cell's printed output
    assert len(re.findall(r'<img[^>]+src="data:image/png;base64,', page)) >= 3   # figures embedded
    assert "Overview and data" in page and "Exercise 1." in page     # the markdown is rendered too
    index = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert f'href="{notebook.stem}.html"' in index and "smoke" in index


def test_book_reports_a_failing_notebook_by_name(tmp_path):
    import nbformat

    bad = tmp_path / "broken.ipynb"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("raise ValueError('boom')")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, bad)
    with pytest.raises(RuntimeError, match="broken.ipynb failed to execute"):
        build_book.build([bad], tmp_path / "out")
    with pytest.raises(SystemExit):                                  # argparse: "notebook not found: ..."
        build_book.main([str(tmp_path / "missing.ipynb")])
