"""The paper's findings, each checked against the tables the notebooks wrote to ``results/``:
the Introduction's claims table. Every verdict is computed here from the numbers, none typed.

A finding *holds* on a dataset when its numbers say so, *does not hold* when they say
otherwise, and is *not measured* when the table it needs is missing. How "audible and
distinct" is measured (:func:`prototype_statistics`): every prototype played at -3 dBFS is a
steady sound, not a click (RMS above :data:`AUDIBLE_RMS_DBFS`), and differs from its nearest
other prototype by at least :data:`DISTINCT_DB` in spectral shape (the RMS difference of their
spectra in dB over the mel bands, once their levels are matched, since a gain absorbs level).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from hearproto.frontend import LOG_RANGE, FrontEnd
from hearproto.runner.paper import STAGE_LABELS

__all__ = ["FINDINGS", "Verdict", "AUDIBLE_RMS_DBFS", "DISTINCT_DB", "prototype_statistics",
           "check_findings", "claims_table", "findings_markdown"]

#: (key, the finding as the paper states it).
FINDINGS: tuple[tuple[str, str], ...] = (
    ("transformations", "Each transformation lowers the reconstruction error L_rec"),
    ("stages", "Supervised accuracy rises with each stage of the curriculum"),
    ("cross_entropy", "The cross-entropy stage lifts supervised accuracy"),
    ("supervised", "Ours beats Direct Classification and APNet, supervised"),
    ("unsupervised", "Ours beats Autoencoder + K-means, unsupervised"),
    ("prototypes", "The prototypes are audible and distinct"),
)
#: A prototype played at -3 dBFS peak must have an RMS above this to count as audible.
AUDIBLE_RMS_DBFS = -30.0
#: Two prototypes differ audibly when their spectral shapes differ by this much (RMS, dB).
DISTINCT_DB = 1.0
#: dB per unit of the scaled log power (:func:`hearproto.frontend.log_scale`).
DB_PER_UNIT = 10.0 * LOG_RANGE
#: Table 1's rows of the transformation stages, in curriculum order, and of cross-entropy.
TRANSFORMATION_STAGES = tuple(STAGE_LABELS[s] for s in ("raw", "gain", "pitch", "filters"))
CROSS_ENTROPY_STAGE = STAGE_LABELS["ce"]


@dataclass(frozen=True)
class Verdict:
    holds: bool | None  # None: not measured
    evidence: str

    @property
    def label(self) -> str:
        return {True: "holds", False: "does not hold", None: "not measured"}[self.holds]


NOT_MEASURED = Verdict(None, "no table yet")


def _arrow(values) -> str:
    return " → ".join(f"{v:.1f}" if abs(v) >= 1 else f"{v:.3f}" for v in values)


def _check_transformations(table1: pd.DataFrame) -> Verdict:
    parts, holds = [], True
    for mode in ("supervised", "unsupervised"):
        rows = table1[(table1["mode"] == mode)].set_index("stage")
        if not set(TRANSFORMATION_STAGES) <= set(rows.index):
            continue
        l_rec = [float(rows.at[s, "L_rec"]) for s in TRANSFORMATION_STAGES]
        holds &= all(b < a for a, b in zip(l_rec, l_rec[1:]))
        parts.append(f"{mode} L_rec {_arrow(l_rec)}")
    return Verdict(holds, "; ".join(parts)) if parts else NOT_MEASURED


def _supervised_oa(table1: pd.DataFrame) -> pd.Series | None:
    rows = table1[table1["mode"] == "supervised"].set_index("stage")["OA"]
    wanted = [*TRANSFORMATION_STAGES, CROSS_ENTROPY_STAGE]
    return rows.reindex(wanted).astype(float) if set(wanted) <= set(rows.index) else None


def _check_stages(table1: pd.DataFrame) -> Verdict:
    oa = _supervised_oa(table1)
    if oa is None:
        return NOT_MEASURED
    values = oa.to_numpy()
    drops = [f"{b} ({oa[b]:.1f} after {oa[a]:.1f})" for a, b in zip(oa.index, oa.index[1:])
             if oa[b] < oa[a]]
    evidence = f"OA {_arrow(values)} %" + (f"; falls at {', '.join(drops)}" if drops else "")
    return Verdict(not drops, evidence)


def _check_cross_entropy(table1: pd.DataFrame) -> Verdict:
    oa = _supervised_oa(table1)
    if oa is None:
        return NOT_MEASURED
    before, after = oa[TRANSFORMATION_STAGES[-1]], oa[CROSS_ENTROPY_STAGE]
    return Verdict(bool(after > before), f"OA {before:.1f} → {after:.1f} %")


def _mean(table: pd.DataFrame, method: str) -> tuple[float, float] | None:
    rows = table.set_index("method")
    if method not in rows.index:
        return None
    std = rows.at[method, "OA std"] if "OA std" in rows.columns else float("nan")
    return float(rows.at[method, "OA"]), float(std)


def _versus(table: pd.DataFrame, ours: str, others: tuple[str, ...]) -> Verdict:
    mine = _mean(table, ours)
    theirs = {name: _mean(table, name) for name in others}
    if mine is None or any(v is None for v in theirs.values()):
        return NOT_MEASURED

    def shown(value: tuple[float, float]) -> str:
        mean, std = value
        return f"{mean:.1f}" + (f" ± {std:.1f}" if np.isfinite(std) and std > 0 else "")

    holds = all(mine[0] > value[0] for value in theirs.values())
    evidence = f"OA ours {shown(mine)} %, " + ", ".join(
        f"{name} {shown(value)} %" for name, value in theirs.items())
    for floor in table.loc[table["method"].str.endswith("(floor)"), "method"]:
        evidence += f"; {floor.removesuffix(' (floor)')}, the floor, {_mean(table, floor)[0]:.1f} %"
    return Verdict(holds, evidence)


def _check_prototypes(prototypes: pd.DataFrame) -> Verdict:
    quiet = prototypes[prototypes["rms_dbfs"] < AUDIBLE_RMS_DBFS]
    close = prototypes[prototypes["nearest_db"] < DISTINCT_DB]
    holds = quiet.empty and close.empty
    evidence = (f"{len(prototypes)} prototypes; RMS at -3 dBFS peak ≥ "
                f"{prototypes['rms_dbfs'].min():.0f} dBFS; nearest pair "
                f"{prototypes['nearest_db'].min():.1f} dB apart in spectral shape")
    if not close.empty:
        evidence += f"; {len(close)} closer than {DISTINCT_DB:g} dB to another"
    return Verdict(holds, evidence)


def prototype_statistics(prototypes: torch.Tensor, names: list[str], frontend: FrontEnd,
                         seconds: float = 1.0, n_iter: int = 32) -> pd.DataFrame:
    """One row per prototype ``(K, F)``: ``rms_dbfs``, the RMS of its sound once its peak is
    at -3 dBFS (:data:`~hearproto.viz.PLAYER_PEAK_DBFS`), ``nearest`` (the prototype whose
    spectral shape is closest) and ``nearest_db``, how far it is (RMS over mel bands, in dB,
    levels matched)."""
    from hearproto.audio import prototype_to_audio
    from hearproto.viz import PLAYER_PEAK_DBFS

    frames = prototypes.detach().float().cpu()
    shapes = DB_PER_UNIT * (frames - frames.mean(1, keepdim=True))  # (K, F), in dB
    distances = torch.cdist(shapes, shapes) / np.sqrt(frames.shape[1])  # RMS over bands
    distances.fill_diagonal_(float("inf"))
    rows = []
    for k, name in enumerate(names):
        wave = prototype_to_audio(frames[k], frontend, seconds=seconds, n_iter=n_iter)
        wave = wave * (10 ** (PLAYER_PEAK_DBFS / 20) / max(np.abs(wave).max(), 1e-30))
        nearest = int(distances[k].argmin())
        rows.append({"prototype": name,
                     "rms_dbfs": 20 * np.log10(max(np.sqrt(np.mean(wave ** 2)), 1e-30)),
                     "nearest": names[nearest], "nearest_db": float(distances[k, nearest])})
    return pd.DataFrame(rows)


def _read(folder: Path, name: str) -> pd.DataFrame | None:
    path = folder / name
    return pd.read_csv(path) if path.is_file() else None


def _verdicts(table1: pd.DataFrame | None = None, table2: pd.DataFrame | None = None,
              table3: pd.DataFrame | None = None,
              prototypes: pd.DataFrame | None = None) -> dict[str, Verdict]:
    return {
        "transformations": NOT_MEASURED if table1 is None else _check_transformations(table1),
        "stages": NOT_MEASURED if table1 is None else _check_stages(table1),
        "cross_entropy": NOT_MEASURED if table1 is None else _check_cross_entropy(table1),
        "supervised": NOT_MEASURED if table3 is None else _versus(
            table3, "Ours supervised", ("Direct Classification", "APNet")),
        "unsupervised": NOT_MEASURED if table2 is None else _versus(
            table2, "Ours unsupervised", ("Autoencoder + K-means",)),
        "prototypes": NOT_MEASURED if prototypes is None else _check_prototypes(prototypes),
    }


def check_findings(folder: str | Path) -> dict[str, Verdict]:
    """The verdict of every finding on the tables in one results folder
    (``results/SCALE/DATASET/``: table1.csv, table2.csv, table3.csv, prototypes.csv)."""
    folder = Path(folder)
    return _verdicts(*(_read(folder, f"{name}.csv")
                       for name in ("table1", "table2", "table3", "prototypes")))


def findings_markdown(table1: pd.DataFrame | None = None, table2: pd.DataFrame | None = None,
                      table3: pd.DataFrame | None = None) -> str:
    """The findings that the given tables decide, as Markdown bullets: the finding, its
    verdict in bold, the numbers that decide it (for the Results pages, below their table)."""
    verdicts = _verdicts(table1, table2, table3)
    return "\n".join(f"- {finding}: **{verdicts[key].label}** ({verdicts[key].evidence})."
                      for key, finding in FINDINGS if verdicts[key].holds is not None)


def claims_table(results_root: str | Path, scale: str, datasets) -> pd.DataFrame:
    """The claims table: one row per finding, per dataset a verdict and its evidence."""
    verdicts = {d: check_findings(Path(results_root) / scale / d) for d in datasets}
    rows = []
    for key, finding in FINDINGS:
        row = {"finding": finding}
        for dataset in datasets:
            verdict = verdicts[dataset][key]
            row[f"{dataset}"] = verdict.label
            row[f"{dataset} evidence"] = verdict.evidence
        rows.append(row)
    return pd.DataFrame(rows)
