"""The book's parts and its Introduction and Reproduce pages: the table of contents, the order
in which the runner executes the notebooks, and the provenance the Reproduce page reads."""

from __future__ import annotations

import ast
import json
import math
import re
import shlex
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ("instruments", "speakers")

#: Pages written by hand, not executed from a template (training: the recipe's departures;
#: references lists book/references.bib).
STATIC_PAGES = {"training", "references"}

#: The book's parts after the root page (the Introduction), with their pages.
PARTS = {
    "Method": ["frontend", *(f"transformations-{d}" for d in DATASETS), "training"],
    "Data": ["datasets"],
    # Tables 1, 2 and 3, in the paper's order
    "Results": [f"{name}-{d}" for name in ("ablation", "clustering", "classification")
                for d in DATASETS],
    "Listening": [f"{name}-{d}" for name in ("prototypes", "timbre") for d in DATASETS],
    "Explorer": ["explorer", "own_sounds"],
    "Reproduce": ["reproduce", "references"],
}


def template(name: str) -> nbformat.NotebookNode:
    return nbformat.read(ROOT / "experiments" / f"{name}.ipynb", as_version=4)


def parameter_names(name: str) -> set[str]:
    cell, = [c for c in template(name).cells if "parameters" in c.metadata.get("tags", [])]
    return {target.id for node in ast.parse(cell.source).body if isinstance(node, ast.Assign)
            for target in node.targets}


def test_toc_has_the_seven_parts_in_order():
    toc = yaml.safe_load((ROOT / "book" / "_toc.yml").read_text())
    # Part 1, the Introduction, is the root page (Jupyter Book 1 cannot list the root under a
    # caption too); its title is what the navigation shows first
    assert toc["root"] == "intro"
    first_cell = template("intro").cells[0]
    assert first_cell.cell_type == "markdown" and first_cell.source.startswith("# Introduction\n")
    parts = {part["caption"]: [chapter["file"] for chapter in part["chapters"]]
             for part in toc["parts"]}
    assert list(parts) == list(PARTS)
    assert parts == PARTS


def test_every_page_has_a_template_the_runner_knows():
    from hearproto.runner.experiments import EXPERIMENTS, GENERAL, PER_DATASET, SUMMARY, output_name

    assert "explorer" in GENERAL and SUMMARY == ("intro", "reproduce")
    pages = ["intro", *(page for pages in PARTS.values() for page in pages)]
    made = {output_name(name, d) for name in EXPERIMENTS for d in DATASETS}
    assert set(pages) - STATIC_PAGES == made
    for page in STATIC_PAGES:
        assert (ROOT / "book" / f"{page}.md").is_file()
    assert output_name("reproduce", "speakers") == "reproduce"
    for name in ("intro", "reproduce"):
        names = parameter_names(name)
        assert {"scale", "device", "seed", "runs_dir", "data_root", "n_speakers",
                "results_dir"} <= names
    assert not (ROOT / "book" / "intro.md").exists(), "intro is a notebook now"


def test_new_templates_keep_the_notebook_conventions():
    for name in ("intro", "reproduce"):
        cells = template(name).cells
        tags = [c.metadata.get("tags", []) for c in cells]
        assert sum("parameters" in t for t in tags) == 1
        assert all("remove-cell" in t for t in tags if "parameters" in t)
        code = [t for c, t in zip(cells, tags) if c.cell_type == "code" and "parameters" not in t]
        assert all({"remove-input", "remove-cell"} & set(t) for t in code), f"{name}: code cells are hidden"
        assert any("nbval-check-output" in t for t in code)


def test_regression_checks_stay_off_the_pages():
    """What nbval compares (shapes, sanity checks) is for the tests, not for the reader."""
    for path in sorted((ROOT / "experiments").glob("*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            tags = cell.metadata.get("tags", [])
            if "nbval-check-output" in tags:
                assert "remove-cell" in tags, (path.name, cell.source[:60])


def test_method_pages_fold_their_code():
    """The Method pages keep their code, folded (a reader can open it); checks stay hidden."""
    for name in ("frontend", "transformations"):
        for cell in template(name).cells:
            tags = cell.metadata.get("tags", [])
            if cell.cell_type == "code" and not {"parameters", "nbval-check-output"} & set(tags):
                assert "hide-input" in tags and "remove-input" not in tags, (name, cell.source[:60])


def test_the_introduction_cites_the_paper_and_links_the_authors_code():
    first = template("intro").cells[0].source
    assert "{cite:p}`loiseau2022hear`" in first and "@inproceedings{loiseau2022hear" in first
    assert "https://github.com/romainloiseau/a-model-you-can-hear" in first
    bib = (ROOT / "book" / "references.bib").read_text()
    assert "@inproceedings{loiseau2022hear," in bib


@pytest.fixture
def recorded(monkeypatch, tmp_path):
    """run_experiments with run_notebook and write_provenance replaced by recorders."""
    import hearproto.runner.experiments as experiments

    calls = []

    def fake_run_notebook(template, output, parameters, **kwargs):
        calls.append((Path(template).stem, Path(output).name, dict(parameters), kwargs))
        return experiments.NotebookRun(Path(template).stem, Path(output), False, 0.0)

    monkeypatch.setattr(experiments, "run_notebook", fake_run_notebook)
    monkeypatch.setattr(experiments, "write_provenance", lambda *args, **kwargs: None)
    return calls


def test_reproduce_runs_after_every_per_dataset_notebook(recorded, tmp_path):
    from hearproto.runner.experiments import GENERAL, PER_DATASET, run_experiments

    results = tmp_path / "results"
    run_experiments(scale="small", output_dir=tmp_path / "book", results_dir=results,
                    extra_parameters={"data_root": "/data/sol", "device": "cpu"})
    names = [name for name, *_ in recorded]
    # the introduction's claims table and the Reproduce page read every table: they come last
    assert names[-2:] == ["intro", "reproduce"] and names.count("reproduce") == 1
    assert names[:len(GENERAL)] == list(GENERAL)
    assert sorted(names[len(GENERAL):-2]) == sorted(list(PER_DATASET) * len(DATASETS))
    outputs = [output for _, output, *_ in recorded]
    assert outputs[-1] == "reproduce.ipynb" and outputs[-2] == "intro.ipynb"
    # the summary reads the results root; only per-dataset notebooks get a data folder; the
    # folders are relative to the pages' own (a page names no machine path)
    by_name = {name: parameters for name, _, parameters, _ in recorded}
    assert by_name["reproduce"]["results_dir"] == "../results"
    assert by_name["intro"]["results_dir"] == "../results"
    assert by_name["reproduce"]["scale"] == "small" and by_name["reproduce"]["device"] == "cpu"
    assert "data_root" not in by_name["intro"] and "data_root" not in by_name["reproduce"]
    assert by_name["ablation"]["data_root"] == "/data/sol"
    assert by_name["ablation"]["results_dir"] == "../results/small/speakers"


def test_only_reproduce_and_comma_lists_from_the_command_line(recorded, tmp_path):
    from hearproto.cli import main

    common = ["experiments", "run", "--scale", "ci", "--output-dir", str(tmp_path), "--no-results"]
    assert main([*common, "--only", "reproduce"]) == 0
    assert [name for name, *_ in recorded] == ["reproduce"]
    assert "results_dir" not in recorded[0][2]  # no results: the page looks in results/
    recorded.clear()
    assert main([*common, "--only", "reproduce,intro", "ablation",
                 "--datasets", "instruments"]) == 0
    assert [name for name, *_ in recorded] == ["ablation", "intro", "reproduce"]
    assert main([*common, "--only", "intro,nope"]) == 2


def write_provenance_file(folder: Path, seconds: dict, **extra) -> None:
    folder.mkdir(parents=True)
    notebooks = {name: {"output": f"book/{name}.ipynb", "executed_now": True,
                        "wall_seconds": value, "git_commit": "abc"}
                 for name, value in seconds.items()}
    record = {"git_commit": "abc123", "device": "cpu", "device_name": "cpu (x86_64, 2 threads)",
              "torch": "2.13.0+cpu", "python": "3.11.7",
              "dataset": {"name": folder.name, "files": 12, "classes": 3, "split_hash": "ff"},
              "notebooks": notebooks, **extra}
    (folder / "provenance.json").write_text(json.dumps(record))


@pytest.fixture
def results_tree(tmp_path) -> Path:
    root = tmp_path / "results"
    write_provenance_file(root / "small" / "speakers", {"timbre": 5.0, "ablation": 20.0})
    write_provenance_file(root / "small" / "instruments",
                          {"ablation": 60.0, "clustering": 30.0, "timbre": None})
    (root / "small" / "broken").mkdir()
    (root / "small" / "broken" / "provenance.json").write_text("{not json")
    (root / "small" / "empty").mkdir()  # a folder without provenance
    write_provenance_file(root / "paper" / "instruments", {"ablation": 1000.0})
    return root


def test_timings_table_reads_a_results_tree(results_tree):
    from hearproto.runner.results import timings_table

    table = timings_table(results_tree, "small")
    assert list(table.columns) == ["instruments", "speakers", "total"]
    assert list(table.index) == ["ablation", "clustering", "timbre", "total"]  # runner order
    assert table.loc["ablation", "instruments"] == 60.0
    assert table.loc["ablation", "total"] == 80.0
    assert math.isnan(table.loc["clustering", "speakers"])  # not run there
    assert math.isnan(table.loc["timbre", "instruments"])  # no time recorded
    assert table.loc["total", "instruments"] == 90.0 and table.loc["total", "speakers"] == 25.0
    assert table.loc["total", "total"] == 115.0
    assert timings_table(results_tree, "paper").loc["total", "total"] == 1000.0


def test_timings_table_is_empty_without_provenance(results_tree, tmp_path):
    from hearproto.runner.results import provenance_table, read_provenance, timings_table

    assert timings_table(results_tree, "ci").empty  # no such scale folder
    assert timings_table(tmp_path / "nowhere", "small").empty
    assert timings_table(None, "small").empty
    assert read_provenance(None, "small") == {}
    assert provenance_table(tmp_path / "nowhere", "small").empty


def test_provenance_table_says_where_results_were_made(results_tree):
    from hearproto.runner.results import provenance_table

    table = provenance_table(results_tree, "small")
    assert list(table.index) == ["instruments", "speakers"]  # unreadable files skipped
    assert table.loc["speakers", "device"] == "cpu (x86_64, 2 threads)"
    assert table.loc["instruments", "classes"] == 3 and table.loc["instruments", "torch"]


def test_executed_seconds_reads_the_general_notebooks(tmp_path):
    from hearproto.runner.results import executed_seconds

    for name, scale, seconds in (("intro", "small", 12.5), ("datasets", "ci", 3.0)):
        notebook = nbformat.v4.new_notebook(metadata={"hearproto": {
            "parameters": {"scale": scale}, "wall_seconds": seconds}})
        nbformat.write(notebook, tmp_path / f"{name}.ipynb")
    (tmp_path / "frontend.ipynb").write_text("not a notebook")
    seconds = executed_seconds(tmp_path, ["intro", "frontend", "datasets", "explorer"], "small")
    assert seconds.to_dict() == {"intro": 12.5}


def test_repository_root_from_the_runners_folders():
    from hearproto.runner.results import repository_root

    for folder in ("book", "tests/notebooks", "."):
        assert repository_root(ROOT / folder) == ROOT


def test_provenance_digest_follows_timings_not_reuse(results_tree):
    from hearproto.runner.experiments import provenance_digest

    path = results_tree / "small" / "speakers" / "provenance.json"
    before = provenance_digest(results_tree, "small")
    record = json.loads(path.read_text())
    record["notebooks"]["timbre"]["executed_now"] = False  # a run that reused it
    path.write_text(json.dumps(record))
    assert provenance_digest(results_tree, "small") == before
    record["notebooks"]["timbre"]["wall_seconds"] = 6.0  # executed again
    path.write_text(json.dumps(record))
    assert provenance_digest(results_tree, "small") != before
    assert provenance_digest(None, "small") == ""


def shell_commands(text: str, program: str) -> list[list[str]]:
    """Every line of the fenced bash blocks in ``text`` that starts with ``program``."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith(program):
                commands.append(shlex.split(line))
    return commands


def test_reproduce_page_commands_are_exact():
    from hearproto.cli import build_parser
    from hearproto.data import DATASETS as KNOWN_DATASETS
    from hearproto.runner.experiments import EXPERIMENTS

    text = "\n".join(c.source for c in template("reproduce").cells if c.cell_type == "markdown")
    commands = shell_commands(text, ".venv/bin/hearproto")
    assert len(commands) >= 6
    parser = build_parser()
    for command in commands:
        args = parser.parse_args(command[1:])  # exits (fails) on an unknown option
        for name in (getattr(args, "only", None) or []):
            assert set(name.split(",")) <= set(EXPERIMENTS), command
        if args.datasets:
            assert set(args.datasets.split(",")) <= set(KNOWN_DATASETS), command
        if getattr(args, "data_root", None):
            assert args.datasets and "," not in args.datasets, command
    assert {"sol", "librispeech", "folder"} <= {c[c.index("--datasets") + 1] for c in commands
                                                if "--datasets" in c}
    papermill = shell_commands(text, ".venv/bin/papermill")
    assert papermill
    for command in papermill:
        name = Path(command[1]).stem
        given = {command[i + 1] for i, word in enumerate(command) if word == "-p"}
        assert given <= parameter_names(name), command
    make = shell_commands(text, "make")
    assert {"book", "test", "html"} <= {c[1] for c in make}
    makefile = (ROOT / "Makefile").read_text()
    assert all(re.search(rf"^{c[1]}:", makefile, flags=re.M) for c in make)


def test_per_dataset_pages_carry_their_dataset_in_the_title():
    from nbformat.v4 import new_markdown_cell, new_notebook

    from hearproto.runner.experiments import name_the_dataset

    notebook = new_notebook(cells=[new_markdown_cell("Intro text"),
                                   new_markdown_cell("# Timbre transfer\n\nprose\n# not this")])
    name_the_dataset(notebook, "speakers")
    assert notebook.cells[1].source == "# Timbre transfer (speakers)\n\nprose\n# not this"
    name_the_dataset(notebook, "speakers")  # idempotent
    assert notebook.cells[1].source.count("(speakers)") == 1
