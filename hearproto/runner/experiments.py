"""Run the papermill notebook templates of ``experiments/`` into executed copies in ``book/``.

Three kinds of template, executed in this order:

* :data:`GENERAL` (the front end, the data, the explorer): once each, into
  ``book/NAME.ipynb``;
* :data:`PER_DATASET` (the paper's tables and figures): once per dataset, into
  ``book/NAME-DATASET.ipynb``, writing their tables and a ``provenance.json`` to
  ``results/SCALE/DATASET/``;
* :data:`SUMMARY` (the introduction, with its claims table, and the Reproduce page): last, into
  ``book/NAME.ipynb``, because they read what the per-dataset notebooks wrote
  (``results/SCALE/*/``: the tables and ``provenance.json``).

An executed copy records a fingerprint of its template, its parameters and the package's
source (for a summary, also of the provenance files it reads); a later run with the same
fingerprint reuses it instead of executing again.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING


from hearproto.files import atomic_path
from hearproto.provenance import describe_device, git_commit
from hearproto.runner.catalogue import (DEFAULT_DATASETS, EXPERIMENTS, GENERAL, PER_DATASET,
                                        SCALES, SUMMARY)

if TYPE_CHECKING:  # the book extras: imported where a notebook is read or run
    import nbformat

__all__ = ["EXPERIMENTS", "GENERAL", "PER_DATASET", "SUMMARY", "DEFAULT_DATASETS", "SCALES",
           "NotebookRun", "fingerprint", "run_notebook", "run_experiments", "output_name",
           "provenance_digest", "write_provenance"]

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # hearproto/
#: Parameters that only the per-dataset notebooks receive from ``run_experiments``.
DATASET_PARAMETERS = ("data_root", "n_speakers")
METADATA_KEY = "hearproto"


@dataclass
class NotebookRun:
    name: str
    output: Path
    executed: bool
    seconds: float


def _package_digest() -> str:
    digest = hashlib.sha256()
    for source in sorted(PACKAGE_DIR.rglob("*.py")):
        digest.update(source.relative_to(PACKAGE_DIR).as_posix().encode())
        digest.update(source.read_bytes())
    return digest.hexdigest()


def fingerprint(template: Path, parameters: dict, checked_outputs_only: bool = False) -> str:
    """Hash of the template's bytes, the parameters, the output mode and the hearproto
    sources."""
    digest = hashlib.sha256()
    digest.update(Path(template).read_bytes())
    digest.update(json.dumps(parameters, sort_keys=True, default=str).encode())
    digest.update(b"checked-only" if checked_outputs_only else b"all")
    digest.update(_package_digest().encode())
    return digest.hexdigest()


def stored_fingerprint(notebook: Path) -> str | None:
    """The fingerprint recorded in an executed notebook, or None."""
    import nbformat

    try:
        metadata = nbformat.read(notebook, as_version=4).metadata
    except (OSError, ValueError, json.JSONDecodeError):
        return None
    return metadata.get(METADATA_KEY, {}).get("fingerprint")


CHECKED_TAG = "nbval-check-output"


def run_notebook(
    template: Path, output: Path, parameters: dict, force: bool = False,
    kernel_name: str = "python3", progress: bool = True, checked_outputs_only: bool = False,
    inputs: str = "",
) -> NotebookRun:
    """Execute ``template`` with papermill into ``output`` (written atomically).

    Skips the execution when ``output`` already holds the same fingerprint, unless ``force``.
    ``checked_outputs_only`` keeps only the outputs of cells tagged ``nbval-check-output``:
    a light reference for ``pytest --nbval-lax``, which compares nothing else. ``inputs``
    digests what else the notebook reads (it joins the fingerprint).
    """
    import nbformat
    import papermill

    template, output = Path(template), Path(output)
    if not template.is_file():
        raise FileNotFoundError(f"{template}: no such notebook template")
    name = template.stem
    key = fingerprint(template, parameters, checked_outputs_only)
    if inputs:
        key = hashlib.sha256(f"{key}:{inputs}".encode()).hexdigest()
    if not force and output.is_file() and stored_fingerprint(output) == key:
        return NotebookRun(name, output, executed=False, seconds=0.0)

    start = time.perf_counter()
    with atomic_path(output) as tmp:
        papermill.execute_notebook(
            str(template), str(tmp), parameters=parameters, kernel_name=kernel_name,
            progress_bar=progress, cwd=str(output.parent.resolve()),
        )
        seconds = time.perf_counter() - start
        notebook = nbformat.read(tmp, as_version=4)
        if name in PER_DATASET and parameters.get("dataset"):
            name_the_dataset(notebook, str(parameters["dataset"]))
        for cell in notebook.cells:  # the book shows parameters in prose, not as code
            tags = cell.metadata.get("tags", [])
            if "injected-parameters" in tags and "remove-cell" not in tags:
                cell.metadata["tags"] = [*tags, "remove-cell"]
            if checked_outputs_only and cell.cell_type == "code" and CHECKED_TAG not in tags:
                cell.outputs = []
        # no machine paths in a page: what papermill recorded, relative to the page's folder
        recorded = notebook.metadata.get("papermill", {})
        recorded["input_path"] = _relative(template, output.parent)
        recorded["output_path"] = output.name
        notebook.metadata[METADATA_KEY] = {
            "fingerprint": key,
            "template": _relative(template, output.parent),
            "parameters": parameters,
            "git_commit": git_commit(template.parent),
            "wall_seconds": round(seconds, 2),
            "machine": platform.machine(),
            "python": platform.python_version(),
        }
        nbformat.write(notebook, tmp)
    return NotebookRun(name, output, executed=True, seconds=seconds)


def name_the_dataset(notebook: nbformat.NotebookNode, dataset: str) -> None:
    """Append ``(dataset)`` to the notebook's title (its first ``# `` heading), so that the
    pages of one template for two datasets differ in the book's navigation."""
    for cell in notebook.cells:
        if cell.cell_type != "markdown":
            continue
        lines = cell.source.split("\n")
        for i, line in enumerate(lines):
            if line.startswith("# "):
                if not line.rstrip().endswith(f"({dataset})"):
                    lines[i] = f"{line.rstrip()} ({dataset})"
                    cell.source = "\n".join(lines)
                return


def output_name(name: str, dataset: str | None) -> str:
    """The executed copy's file stem: ``name`` or, per dataset, ``name-dataset``."""
    return f"{name}-{dataset}" if name in PER_DATASET else name


def provenance_digest(results_root: Path | None, scale: str) -> str:
    """A digest of ``results_root/scale/*/provenance.json`` (what a summary notebook reads),
    without the entries that change on every run (``executed_now``)."""
    if results_root is None:
        return ""
    digest = hashlib.sha256()
    for path in sorted(Path(results_root).glob(f"{scale}/*/provenance.json")):
        try:
            provenance = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            provenance = None
        if isinstance(provenance, dict):
            for entry in (provenance.get("notebooks") or {}).values():
                if isinstance(entry, dict):
                    entry.pop("executed_now", None)
        digest.update(path.parent.name.encode())
        digest.update(json.dumps(provenance, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def run_experiments(
    names: list[str] | None = None, scale: str = "full", experiments_dir: Path = Path("experiments"),
    output_dir: Path = Path("book"), force: bool = False, extra_parameters: dict | None = None,
    checked_outputs_only: bool = False, datasets: list[str] | None = None,
    results_dir: Path | None = None, progress: bool = True,
) -> list[NotebookRun]:
    """Execute the named experiment notebooks (all by default) at ``scale``: the general ones
    once, the per-dataset ones once per dataset, then the summaries. With ``results_dir``, the
    notebooks write their tables to ``results_dir/scale/dataset/``, each such folder gets a
    ``provenance.json``, and the summaries read them (their ``results_dir`` parameter is the
    root, ``results_dir`` itself; without it they look in the repository's ``results/``)."""
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
    names = list(EXPERIMENTS) if not names else names
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        raise ValueError(f"unknown experiment(s) {unknown}; choose from {', '.join(EXPERIMENTS)}")
    datasets = list(DEFAULT_DATASETS) if not datasets else datasets
    base = {"scale": scale, **(extra_parameters or {})}
    if not checked_outputs_only and "data_root" not in base:
        prepare_built_in(scale, datasets, progress)
    # a data folder and a speaker count belong to the per-dataset notebooks' dataset; the
    # general ones show the built-in datasets
    general = {k: v for k, v in base.items() if k not in DATASET_PARAMETERS}
    runs = []
    for name in (n for n in EXPERIMENTS if n in names and n in GENERAL):
        runs.append(run_notebook(
            Path(experiments_dir) / f"{name}.ipynb", Path(output_dir) / f"{name}.ipynb", general,
            force=force, checked_outputs_only=checked_outputs_only, progress=progress))
    for dataset in datasets:
        parameters = {**base, "dataset": dataset}
        folder = None
        if results_dir is not None:
            folder = Path(results_dir).resolve() / scale / dataset
            # relative to the folder the notebooks run in: a page names no machine path
            parameters["results_dir"] = _relative(folder, Path(output_dir))
        done = []
        for name in (n for n in EXPERIMENTS if n in names and n in PER_DATASET):
            done.append(run_notebook(
                Path(experiments_dir) / f"{name}.ipynb",
                Path(output_dir) / f"{output_name(name, dataset)}.ipynb", parameters,
                force=force, checked_outputs_only=checked_outputs_only, progress=progress))
        if folder is not None and done:
            write_provenance(folder, dataset, parameters, done)
        runs += done
    for name in (n for n in EXPERIMENTS if n in names and n in SUMMARY):
        parameters, root = dict(general), None
        if results_dir is not None:
            root = Path(results_dir).resolve()
            parameters["results_dir"] = _relative(root, Path(output_dir))
        runs.append(run_notebook(
            Path(experiments_dir) / f"{name}.ipynb", Path(output_dir) / f"{name}.ipynb",
            parameters, force=force, checked_outputs_only=checked_outputs_only,
            progress=progress, inputs=_summary_inputs(root, scale, Path(output_dir))))
    return runs


def prepare_built_in(scale: str, datasets: list[str], progress: bool = True) -> None:
    """Generate and cache the built-in ``datasets`` at ``scale``'s size before any page runs,
    so that generating them (minutes, with its console report: notes dropped, clips
    extended) happens here and never on a page; the pages then read the cache."""
    from hearproto.data import prepare_dataset
    from hearproto.data.registry import DATASETS
    from hearproto.runner.runs import SCALE_SETTINGS

    for name in datasets:
        if name in DATASETS and DATASETS[name].builtin:
            prepare_dataset(name, progress=progress, **SCALE_SETTINGS[scale]["data"])


def _relative(path: Path, start: Path) -> str:
    """``path`` relative to the folder ``start`` (POSIX separators)."""
    return Path(os.path.relpath(Path(path).resolve(), Path(start).resolve())).as_posix()


def _summary_inputs(results_root: Path | None, scale: str, output_dir: Path) -> str:
    """What a summary notebook reads besides its parameters: the provenance files, the tables
    the claims are checked on, and the wall times of the general notebooks executed beside
    it."""
    from hearproto.runner.results import executed_seconds

    general = executed_seconds(output_dir, GENERAL, scale).to_dict()
    tables = hashlib.sha256()
    if results_root is not None:
        for path in sorted(Path(results_root).glob(f"{scale}/*/*.csv")):
            if path.stem in ("table1", "table2", "table3", "prototypes"):
                tables.update(path.relative_to(results_root).as_posix().encode())
                tables.update(path.read_bytes())
    return (provenance_digest(results_root, scale) + tables.hexdigest()
            + json.dumps(general, sort_keys=True))


def write_provenance(folder: Path, dataset: str, parameters: dict,
                     runs: list[NotebookRun]) -> Path:
    """``folder/provenance.json``: what made the tables beside it (atomically). Notebooks not
    in ``runs`` keep the entries that an earlier call recorded."""
    import torch

    from hearproto.data import prepare_dataset
    from hearproto.runner.runs import SCALE_SETTINGS
    from hearproto.runner.tables import HEADLINE_SEEDS
    from hearproto.training import resolve_device
    from hearproto.training.checkpoints import data_provenance

    scale = parameters["scale"]
    device = resolve_device(parameters.get("device", "auto"))
    settings = SCALE_SETTINGS[scale]["data"]
    data = prepare_dataset(dataset, root=parameters.get("data_root"), progress=False,
                           limit_per_class=settings.get("limit_per_class"),
                           frontend=settings.get("preset"),
                           n_speakers=parameters.get("n_speakers", 128))
    path = Path(folder) / "provenance.json"
    notebooks = {}
    if path.is_file():  # keep what earlier runs (e.g. without --only) recorded
        try:
            notebooks = json.loads(path.read_text()).get("notebooks", {})
        except (OSError, json.JSONDecodeError):
            notebooks = {}
    import nbformat

    for run in runs:
        stored = nbformat.read(run.output, as_version=4).metadata.get(METADATA_KEY, {})
        notebooks[run.name] = {"output": run.output.as_posix(),
                               "executed_now": run.executed,
                               "wall_seconds": stored.get("wall_seconds", round(run.seconds, 2)),
                               "git_commit": stored.get("git_commit")}
    provenance = {
        "git_commit": git_commit(PACKAGE_DIR),
        "parameters": parameters,
        "scale_settings": SCALE_SETTINGS[scale],
        "seeds": {"table1": [parameters.get("seed", 0)], "tables2_3": list(HEADLINE_SEEDS[scale])},
        "device": str(device), "device_name": describe_device(device),
        "torch": torch.__version__, "python": platform.python_version(),
        "dataset": {"name": dataset, "files": len(data.table), "classes": len(data.classes),
                    **{k: v for k, v in data_provenance(data).items() if k != "train_paths"}},
        "notebooks": notebooks,
        "total_wall_seconds": round(sum(n["wall_seconds"] or 0 for n in notebooks.values()), 1),
    }
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(provenance, indent=1, default=str) + "\n")
    return path
