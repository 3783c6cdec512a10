"""The notebooks the runner executes, the datasets it runs them on and the scales it knows."""

from __future__ import annotations

__all__ = ["GENERAL", "PER_DATASET", "SUMMARY", "EXPERIMENTS", "DEFAULT_DATASETS", "SCALES"]

#: Notebook templates that do not depend on a dataset (executed once each, first).
GENERAL: tuple[str, ...] = ("frontend", "datasets", "explorer", "own_sounds")
#: Notebook templates executed once per dataset, into ``NAME-DATASET.ipynb``.
PER_DATASET: tuple[str, ...] = ("ablation", "classification", "clustering", "prototypes",
                                "transformations", "timbre")
#: Notebook templates executed once, after all the others: they summarise the tables and the
#: provenance the per-dataset ones wrote (parameters ``scale`` and ``results_dir``, the results
#: root): the introduction's claims table, the Reproduce page.
SUMMARY: tuple[str, ...] = ("intro", "reproduce")
#: Every template, in the order they are executed.
EXPERIMENTS: tuple[str, ...] = GENERAL + PER_DATASET + SUMMARY
#: The datasets ``hearproto experiments run`` uses unless told otherwise.
DEFAULT_DATASETS: tuple[str, ...] = ("instruments", "speakers")
#: ``ci``: seconds, for tests; ``small``: minutes on a CPU; ``full``: the whole built-in
#: datasets, the runs the book ships; ``paper``: the paper's recipe.
SCALES: tuple[str, ...] = ("ci", "small", "full", "paper")
