"""The project's own promises: pins in sync, README examples run, the CLI and the runner work."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import nbformat
import numpy as np
import pytest
import soundfile as sf
import yaml

from hearproto import cli
from hearproto.runner.experiments import fingerprint, run_notebook, stored_fingerprint

ROOT = Path(__file__).resolve().parents[1]


def pyproject_pins() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = set(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        pins |= set(extra)
    return pins


#: Dependencies given as a range, and why: every other one is pinned exactly.
RANGES = {"triton": "a CUDA build of torch pins its own triton (torch 2.13: 3.7.1)"}


def test_every_dependency_is_pinned_and_torchaudio_is_absent():
    pins = pyproject_pins()
    exact = {pin for pin in pins if not pin.startswith(tuple(RANGES))}
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[0-9][A-Za-z0-9.+]*", pin) for pin in exact), pins
    assert len(pins - exact) == len(RANGES)
    assert "torch==2.13.0" in pins
    assert not any(pin.startswith(("torchaudio", "torchvision")) for pin in pins)


def test_environment_yml_matches_pyproject():
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    python = [d for d in environment["dependencies"] if isinstance(d, str) and d.startswith("python")]
    assert python == ["python=3.11"]
    pip_section = next(d["pip"] for d in environment["dependencies"] if isinstance(d, dict))
    assert {p for p in pip_section if "==" in p or p.startswith(tuple(RANGES))} == pyproject_pins()
    assert "-e ." in pip_section


def test_tinysoundfont_is_installed_as_the_error_message_says():
    from hearproto.data.banks import TINYSOUNDFONT_HINT

    command = TINYSOUNDFONT_HINT.removeprefix("pip install ")
    assert command.startswith("--no-deps ")
    assert f"pip install --quiet {command}" in (ROOT / "Makefile").read_text()
    assert TINYSOUNDFONT_HINT in (ROOT / "environment.yml").read_text()


README_RUN = Path("runs/inst-sup")  # the run the README's shell examples train


def train_readme_run(tmp_path: Path) -> None:
    """A small stand-in for the README's `hearproto train ... --out runs/inst-sup`: a few
    epochs on three separable classes that carry instrument names."""
    from conftest import write_tones

    from hearproto.training import train, TrainConfig

    root = write_tones(tmp_path / "sounds", names=("cello", "violin", "piccolo"))
    train(TrainConfig.from_recipe(
        "paper", dataset="folder", root=str(root), out=str(tmp_path / README_RUN),
        mode="supervised", epochs=3, preset="speakers", compile=False, patience=1,
        batch_size=8, lr=3e-3, k_chunk=2, seed=0, eval_batch_size=16), progress=False)


def test_readme_python_examples_run(tmp_path, monkeypatch):
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert blocks, "the README should show the Python API"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HEARPROTO_DATA", str(tmp_path / "home"))
    for block in blocks:
        if str(README_RUN) in block:
            train_readme_run(tmp_path)
        exec(compile(block, "README.md", "exec"), {})


def test_readme_gives_the_two_commands_and_ci_calls_make_test():
    readme = (ROOT / "README.md").read_text()
    assert "make book" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_cli_roundtrip(tmp_path, capsys):
    t = np.arange(16_000) / 16_000
    source = tmp_path / "in.wav"
    sf.write(source, 0.3 * np.sin(2 * np.pi * 330 * t), 16_000)
    target = tmp_path / "out.wav"
    assert cli.main(["roundtrip", str(source), str(target), "--iterations", "8"]) == 0
    assert "out.wav" in capsys.readouterr().out
    rebuilt, sr = sf.read(target)
    assert sr == 16_000 and abs(len(rebuilt) - 16_000) <= 512
    # a second run must not overwrite without --force
    assert cli.main(["roundtrip", str(source), str(target)]) == 2
    assert "--force" in capsys.readouterr().err
    assert cli.main(["roundtrip", str(source), str(target), "--force", "--iterations", "4"]) == 0


def test_cli_status_lists_the_planned_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HEARPROTO_RUNS", str(tmp_path / "runs"))
    assert cli.main(["experiments", "status", "--scale", "ci", "--datasets", "instruments",
                     "--methods", "direct,apnet", "--seeds", "0,1"]) == 0
    out = capsys.readouterr().out
    # APNet trains for the first seed only (SEEDED_METHODS)
    assert "instruments apnet seed 0" in out and "apnet seed 1" not in out
    assert "instruments direct seed 1" in out and out.strip().endswith(
        "3 runs: 3 not started; 0 minutes of training so far")


def test_cli_ship_prunes_the_runs_no_plan_names(tmp_path, monkeypatch, capsys):
    """`experiments ship --prune` removes shipped runs of earlier settings (names no planned
    run has), whatever --methods selects to ship, and a planned name whose sidecar is not of
    these data."""
    from hearproto.runner.runs import run_config

    monkeypatch.setenv("HEARPROTO_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("HEARPROTO_WEIGHTS", str(tmp_path / "weights"))
    folder = tmp_path / "weights" / "ci" / "instruments"
    folder.mkdir(parents=True)
    planned = Path(run_config("apnet", "instruments", "ci", 0).out).name
    for name in (f"{planned}.json", "apnet-seed0-00000000.json",
                 "apnet-seed0-00000000.safetensors"):
        (folder / name).write_text("{}")
    assert cli.main(["experiments", "ship", "--scale", "ci", "--datasets", "instruments",
                     "--methods", "direct", "--seeds", "0", "--prune"]) == 0
    out = capsys.readouterr().out
    # the planned name's sidecar is no sidecar of these data either: pruned as well
    assert sorted(p.name for p in folder.iterdir()) == []
    assert f"removed ci/instruments/{planned}.json: shipped from other data" in out
    assert "removed ci/instruments/apnet-seed0-00000000.json: no planned run" in out
    assert "instruments direct seed 0: not trained, skipped" in out


def test_cli_ship_skips_what_is_shipped_from_these_data_and_replaces_the_rest(
        tones, tmp_path, monkeypatch, capsys):
    """A second `experiments ship` leaves a run shipped from these data alone; a sidecar of
    the same name from other data (a built-in dataset rebuilt) is replaced without --force."""
    import functools
    import json

    from hearproto.runner import runs

    monkeypatch.setenv("HEARPROTO_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("HEARPROTO_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setattr(runs, "run_config", functools.partial(runs.run_config, root=str(tones)))
    runs.train_runs("ci", ["folder"], ["direct"], [0], device="cpu", root=str(tones),
                    progress=False, report=lambda line: None)
    ship = ["experiments", "ship", "--scale", "ci", "--datasets", "folder", "--methods",
            "direct", "--seeds", "0"]
    assert cli.main([*ship, "--dtype", "float32"]) == 0
    assert "folder direct seed 0: " in capsys.readouterr().out
    assert cli.main(ship) == 0
    assert "shipped already, from these data; skipped" in capsys.readouterr().out
    run = next((tmp_path / "runs" / "ci" / "folder").glob("direct-*"))
    run.rename(tmp_path / "kept")  # a new machine: the run folder gone, weights/ holding it
    assert cli.main(ship) == 0
    out = capsys.readouterr().out
    assert "folder direct seed 0: shipped already, from these data" in out
    assert "not trained" not in out
    (tmp_path / "kept").rename(run)
    sidecar_file = next((tmp_path / "weights" / "ci" / "folder").glob("direct-*.json"))
    sidecar = json.loads(sidecar_file.read_text())
    assert sidecar["dtype"] == "float32"  # --dtype float32: no float16 check, no float16
    sidecar["data"]["split_hash"] = "other data"
    sidecar_file.write_text(json.dumps(sidecar))
    assert cli.main(ship) == 0 and "skipped" not in capsys.readouterr().out
    assert json.loads(sidecar_file.read_text())["data"]["split_hash"] != "other data"
    # --prune removes a run shipped from other data that nothing here replaces
    sidecar = json.loads(sidecar_file.read_text())
    sidecar["data"]["split_hash"] = "other data"
    sidecar_file.write_text(json.dumps(sidecar))
    assert cli.main([*ship, "--methods", "apnet", "--prune"]) == 0
    assert "shipped from other data than these" in capsys.readouterr().out
    assert not sidecar_file.exists()


def test_cli_reports_bad_audio_clearly(tmp_path, capsys):
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    assert cli.main(["roundtrip", str(bad), str(tmp_path / "o.wav")]) == 2
    err = capsys.readouterr().err
    assert "bad.wav: not a readable audio file" in err and "Traceback" not in err


def test_console_script_is_installed():
    result = subprocess.run([Path(sys.executable).parent / "hearproto", "--version"],
                            capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("hearproto ")


def test_cli_runs_without_the_book_extras():
    """`pip install hearproto` without [book] (as on a GPU machine): the commands that need
    no notebook stack build their parser and run."""
    code = ("import sys\n"
            "for name in ('nbformat', 'papermill', 'nbclient', 'ipywidgets', 'IPython'):\n"
            "    sys.modules[name] = None  # import fails, as when not installed\n"
            "from hearproto import cli\n"
            "try:\n"
            "    cli.main(['bench', '--help'])\n"
            "except SystemExit as done:\n"
            "    sys.exit(done.code)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--profile" in result.stdout


def _tiny_template(path: Path) -> Path:
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell("value = 1", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("print(value * 2)"),
    ]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                       "language": "python"}
    nbformat.write(notebook, path)
    return path


def test_runner_executes_then_reuses(tmp_path):
    template = _tiny_template(tmp_path / "tiny.ipynb")
    output = tmp_path / "book" / "tiny.ipynb"
    first = run_notebook(template, output, {"value": 21}, progress=False)
    assert first.executed
    executed = nbformat.read(output, as_version=4)
    assert executed.cells[-1].outputs[0]["text"] == "42\n"
    assert stored_fingerprint(output) == fingerprint(template, {"value": 21})
    assert "remove-cell" in executed.cells[1].metadata["tags"]  # the injected parameters
    assert executed.metadata["hearproto"]["parameters"] == {"value": 21}

    assert not run_notebook(template, output, {"value": 21}, progress=False).executed
    changed = run_notebook(template, output, {"value": 5}, progress=False)
    assert changed.executed
    assert nbformat.read(output, as_version=4).cells[-1].outputs[0]["text"] == "10\n"
    assert sorted(p.name for p in output.parent.iterdir()) == ["tiny.ipynb"]
    # the page names no machine path: papermill's record is relative to the page's folder
    text = output.read_text()
    assert str(tmp_path) not in text and "/tmp" not in text
    recorded = nbformat.read(output, as_version=4).metadata["papermill"]
    assert (recorded["input_path"], recorded["output_path"]) == ("../tiny.ipynb", "tiny.ipynb")


def test_the_book_names_no_machine_path():
    """The pages in book/, executed notebooks (their metadata included) and hand-written
    Markdown, hold no absolute path of the machine that made them, and no work notes: issue
    numbers or commit hashes, which belong to the lab record in docs/."""
    path = re.compile(r"""(?:^|[\s"'=(])(/(?:root|home|tmp|work|Users)/[^\s"']+)""", re.M)
    notes = re.compile(r"(?i)\b(?:issue|issues) #?\d+\b|(?<![\w/])#\d{1,3}\b|"
                       r"\bcommit [0-9a-f]{7,40}\b|\b[0-9a-f]{7}(?:-dirty)\b")
    found = {}
    for page in sorted([*(ROOT / "book").glob("*.ipynb"), *(ROOT / "book").glob("*.md")]):
        text = page.read_text()
        match = path.search(text) or notes.search(text)
        if match:
            found[page.name] = match.group(0).strip()
    assert not found, found


def test_runner_rejects_unknown_names():
    from hearproto.runner.experiments import run_experiments

    with pytest.raises(ValueError, match="unknown experiment"):
        run_experiments(["nope"])
    with pytest.raises(ValueError, match="unknown scale"):
        run_experiments(scale="huge")


def test_the_built_in_data_are_prepared_before_any_page_runs(monkeypatch):
    """Generating a built-in dataset reports on the console (notes dropped, clips extended):
    the runner does it first, so that no page carries that report as a warning."""
    import hearproto.data
    from hearproto.runner import experiments

    events = []
    monkeypatch.setattr(hearproto.data, "prepare_dataset",
                        lambda name, **kw: events.append(("prepare", name, kw.get("limit_per_class"))))
    monkeypatch.setattr(experiments, "run_notebook",
                        lambda template, output, *a, **kw: events.append(("page", output.name)))
    monkeypatch.setattr(experiments, "write_provenance", lambda *a, **kw: None)
    experiments.run_experiments(["datasets", "ablation"], scale="ci",
                                datasets=["instruments", "folder"])
    assert events[0] == ("prepare", "instruments", 5)  # the ci scale's size
    assert [e for e in events if e[0] == "prepare"] == [events[0]]  # a folder is the user's
    assert ("page", "datasets.ipynb") in events[1:]
    events.clear()
    experiments.run_experiments(["ablation"], scale="ci", datasets=["folder"],
                                extra_parameters={"data_root": "somewhere"})
    assert all(e[0] == "page" for e in events)


def test_experiments_cli_wants_one_dataset_with_a_data_root(capsys):
    from hearproto import cli

    assert cli.main(["experiments", "run", "--data-root", "/nowhere", "--datasets",
                     "instruments,speakers"]) == 2
    assert "--data-root needs exactly one dataset" in capsys.readouterr().err


def test_git_commit_is_dirty_for_sources_not_for_outputs(tmp_path):
    from hearproto.provenance import git_commit

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "book").mkdir()
    (tmp_path / "results").mkdir()
    for name in ("book/page.ipynb", "results/table.csv", "source.py"):
        (tmp_path / name).write_text("1\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "c")
    clean = git_commit(tmp_path / "book")
    assert re.fullmatch(r"[0-9a-f]{40}", clean)
    (tmp_path / "book" / "page.ipynb").write_text("2\n")
    (tmp_path / "results" / "table.csv").write_text("2\n")
    assert git_commit(tmp_path / "book") == clean  # the runner's own outputs
    (tmp_path / "source.py").write_text("2\n")
    assert git_commit(tmp_path / "book") == clean + "-dirty"


def test_make_banks_unpacks_every_bank_the_renderer_looks_for():
    from hearproto.data.banks import BANKS

    makefile = (ROOT / "Makefile").read_text()
    listed = re.search(r"^BANK_PACKAGES := (.+)$", makefile, re.M).group(1).split()
    assert sorted(listed) == sorted(bank.package for bank in BANKS.values())
    assert re.search(r"^install: .*\$\(BANKS_STAMP\)", makefile, re.M)


def test_the_citation_file_cites_this_version_and_the_paper():
    """CITATION.cff parses, names the package's version, and its preferred citation is the
    paper as the book's bibliography gives it (title, year, authors in order)."""
    import hearproto

    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert citation["cff-version"] == "1.2.0"
    assert str(citation["version"]) == hearproto.__version__ == project["version"]
    assert citation["license"] == project["license"]["text"]
    paper = citation["preferred-citation"]
    bib = (ROOT / "book" / "references.bib").read_text()
    entry = bib[bib.index("@inproceedings{loiseau2022hear"):]
    entry = entry[:entry.index("\n}")]
    assert f"title     = {{{paper['title']}}}" in entry and str(paper["year"]) in entry
    names = [f"{a['family-names']}, {a['given-names']}" for a in paper["authors"]]
    assert f"author    = {{{' and '.join(names)}}}" in entry


def test_the_repository_address_comes_from_the_project_urls(monkeypatch):
    """``repository_url`` prefers ``Repository`` to ``Homepage``, matches labels in any case,
    and gives None where the package names no address (the book then names the folders)."""
    from importlib import metadata

    from hearproto import provenance

    class Fake(dict):
        def __init__(self, entries):
            super().__init__()
            self.entries = entries

        def get_all(self, key):
            return self.entries if key == "Project-URL" else None

    def fake(entries):
        monkeypatch.setattr(metadata, "metadata", lambda name: Fake(entries))

    fake(["Homepage, https://example.org/home", "repository, https://example.org/code"])
    assert provenance.repository_url() == "https://example.org/code"
    fake(["Homepage, https://example.org/home", "Issues, https://example.org/issues"])
    assert provenance.repository_url() == "https://example.org/home"
    fake([])
    assert provenance.repository_url() is None
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    monkeypatch.undo()
    assert (provenance.repository_url() is None) == (not project.get("urls"))
