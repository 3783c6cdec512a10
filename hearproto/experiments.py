"""Run the papermill notebook templates of ``experiments/`` into executed copies in ``book/``.

An executed copy records a fingerprint of its template, its parameters and the package's
source; a later run with the same fingerprint reuses it instead of executing again.
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat

from hearproto.files import atomic_path

__all__ = ["EXPERIMENTS", "SCALES", "NotebookRun", "fingerprint", "run_notebook", "run_experiments"]

#: Notebook templates, in the order the book presents them.
EXPERIMENTS: tuple[str, ...] = ("frontend", "datasets")
#: ``ci``: seconds, for tests; ``small``: the default of ``make book``; ``paper``: the paper's.
SCALES: tuple[str, ...] = ("ci", "small", "paper")

PACKAGE_DIR = Path(__file__).resolve().parent
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
    try:
        metadata = nbformat.read(notebook, as_version=4).metadata
    except (OSError, ValueError, json.JSONDecodeError):
        return None
    return metadata.get(METADATA_KEY, {}).get("fingerprint")


def git_commit(cwd: Path | None = None) -> str:
    """Current commit (with ``-dirty`` if the tree has changes), or ``unknown``."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
            capture_output=True, text=True, check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


CHECKED_TAG = "nbval-check-output"


def run_notebook(
    template: Path, output: Path, parameters: dict, force: bool = False,
    kernel_name: str = "python3", progress: bool = True, checked_outputs_only: bool = False,
) -> NotebookRun:
    """Execute ``template`` with papermill into ``output`` (written atomically).

    Skips the execution when ``output`` already holds the same fingerprint, unless ``force``.
    ``checked_outputs_only`` keeps only the outputs of cells tagged ``nbval-check-output``:
    a light reference for ``pytest --nbval-lax``, which compares nothing else.
    """
    import papermill

    template, output = Path(template), Path(output)
    if not template.is_file():
        raise FileNotFoundError(f"{template}: no such notebook template")
    name = template.stem
    key = fingerprint(template, parameters, checked_outputs_only)
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
        for cell in notebook.cells:  # the book shows parameters in prose, not as code
            tags = cell.metadata.get("tags", [])
            if "injected-parameters" in tags and "remove-cell" not in tags:
                cell.metadata["tags"] = [*tags, "remove-cell"]
            if checked_outputs_only and cell.cell_type == "code" and CHECKED_TAG not in tags:
                cell.outputs = []
        notebook.metadata[METADATA_KEY] = {
            "fingerprint": key,
            "template": template.as_posix(),
            "parameters": parameters,
            "git_commit": git_commit(template.parent),
            "wall_seconds": round(seconds, 2),
            "machine": platform.machine(),
            "python": platform.python_version(),
        }
        nbformat.write(notebook, tmp)
    return NotebookRun(name, output, executed=True, seconds=seconds)


def run_experiments(
    names: list[str] | None = None, scale: str = "small", experiments_dir: Path = Path("experiments"),
    output_dir: Path = Path("book"), force: bool = False, extra_parameters: dict | None = None,
    checked_outputs_only: bool = False,
) -> list[NotebookRun]:
    """Execute the named experiment notebooks (all by default) at ``scale``."""
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
    names = list(EXPERIMENTS) if not names else names
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        raise ValueError(f"unknown experiment(s) {unknown}; choose from {', '.join(EXPERIMENTS)}")
    parameters = {"scale": scale, **(extra_parameters or {})}
    runs = []
    for name in names:
        runs.append(run_notebook(
            Path(experiments_dir) / f"{name}.ipynb", Path(output_dir) / f"{name}.ipynb",
            parameters, force=force, checked_outputs_only=checked_outputs_only,
        ))
    return runs
