"""The book builds offline from the executed notebooks and carries its audio players."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[1]


def toc_files() -> list[str]:
    toc = yaml.safe_load((ROOT / "book" / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", []):
        files += [chapter["file"] for chapter in part["chapters"]]
    return files


def test_every_experiment_template_has_an_executed_page_in_the_toc():
    from hearproto.runner.experiments import DEFAULT_DATASETS, EXPERIMENTS, output_name

    for name in EXPERIMENTS:
        assert (ROOT / "experiments" / f"{name}.ipynb").is_file()
        parameters = [c for c in nbformat.read(ROOT / "experiments" / f"{name}.ipynb", 4).cells
                      if "parameters" in c.metadata.get("tags", [])]
        assert len(parameters) == 1, f"experiments/{name}.ipynb needs one 'parameters' cell"
        for dataset in DEFAULT_DATASETS:
            page = output_name(name, dataset)
            assert page in toc_files(), f"{page} is not in book/_toc.yml"
            executed = nbformat.read(ROOT / "book" / f"{page}.ipynb", as_version=4)
            assert "hearproto" in executed.metadata, f"book/{page}.ipynb was not made by the runner"
            assert executed.metadata["hearproto"]["parameters"].get("dataset", dataset) == dataset
            assert any(cell.get("outputs") for cell in executed.cells if cell.cell_type == "code")
            errors = [o for c in executed.cells for o in c.get("outputs", [])
                      if o.get("output_type") == "error"]
            assert not errors, f"book/{page}.ipynb holds an error: {errors[0].get('evalue')}"


def test_every_experiment_has_an_nbval_reference():
    from hearproto.runner.experiments import EXPERIMENTS, output_name

    for name in EXPERIMENTS:
        # the per-dataset notebooks are checked on instruments (the CI time budget)
        reference = nbformat.read(
            ROOT / "tests" / "notebooks" / f"{output_name(name, 'instruments')}.ipynb", 4)
        assert reference.metadata["hearproto"]["parameters"]["scale"] == "ci"
        checked = [c for c in reference.cells
                   if "nbval-check-output" in c.metadata.get("tags", [])]
        assert checked and all(c.outputs for c in checked), f"{name}: nothing for nbval to check"


def test_book_builds_with_audio_players(built_book):
    html = built_book
    assert (html / "index.html").is_file()
    page = (html / "frontend.html").read_text()
    players = re.findall(r"<audio\b", page)
    assert len(players) >= 3
    assert len(re.findall(r'src="data:audio/(mpeg|wav);base64,', page)) == len(players)
    assert "<img" in page  # the spectrogram figures


def test_book_pages_load_only_local_scripts_and_styles(built_book):
    """No CDN: every script, stylesheet and widget module comes with the book (offline)."""
    pages = sorted(built_book.glob("*.html"))
    assert pages
    for page in pages:
        html = page.read_text()
        urls = re.findall(r'<(?:script|link)\b[^>]*?\b(?:src|href)="([^"]*)"', html)
        urls += re.findall(r'data-jupyter-widgets-cdn="([^"]*)"', html)
        remote = [url for url in urls if re.match(r"(?i)([a-z][a-z0-9+.-]*:)?//", url)]
        assert not remote, f"{page.name} loads from another host: {remote}"
