"""The paper's findings, each checked against the tables the notebooks wrote to ``results/``:
the Introduction's claims table. Every verdict is computed here from the numbers, none typed.

A finding *holds* on a dataset when its numbers say so, *does not hold* when they say
otherwise, is *undecided* when the difference it rests on is within the noise, and is *not
measured* when the table it needs is missing.

Accuracies are compared with 95 % intervals of their difference (:func:`difference`): over
seeds, each side's Student t interval of its mean (Tables 2 and 3's ``ci95`` columns; a one-seed
side counts as a point), and over clips, the normal interval of a difference of two proportions
measured on the split's clips (independent samples: conservative for two models scored on the
same clips). Where both exist the wider one decides, so a comparison is decided only when both
intervals exclude zero; with neither (one seed each, no clip count) it is undecided. Table 1's
steps from stage to stage are decided on its validation clips alone; its L_rec has no interval
and is compared as measured.

How "audible and distinct" is measured (:func:`prototype_statistics`): every prototype
played at -3 dBFS is a steady sound, not a click (RMS above :data:`AUDIBLE_RMS_DBFS`), and
differs from its nearest other prototype by at least :data:`DISTINCT_DB` in spectral shape (the
RMS difference of their spectra in dB over the mel bands, once their levels are matched, since
a gain absorbs level).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import stats

from hearproto.frontend import LOG_RANGE, FrontEnd
from hearproto.runner.paper import PAPERS_UNSUPERVISED, STAGE_LABELS

__all__ = ["FINDINGS", "Verdict", "LABELS", "CONFIDENCE", "Estimate", "seed_half_width",
           "clips_half_width", "difference", "compare", "AUDIBLE_RMS_DBFS", "DISTINCT_DB",
           "prototype_statistics", "check_findings", "claims_table", "findings_markdown"]

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
#: Every verdict's label.
LABELS = ("holds", "does not hold", "undecided", "not measured")
#: The confidence of every interval here.
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Verdict:
    """A finding's verdict on one dataset: ``holds`` True, False or None (undecided, or not
    measured when ``measured`` is False), and the numbers it rests on."""

    holds: bool | None
    evidence: str
    measured: bool = True

    @property
    def label(self) -> str:
        """One of :data:`LABELS`."""
        if not self.measured:
            return "not measured"
        return {True: "holds", False: "does not hold", None: "undecided"}[self.holds]


NOT_MEASURED = Verdict(None, "no table yet", measured=False)


def seed_half_width(std: float, seeds: int) -> float | None:
    """Half-width of the 95 % Student t interval of a mean over ``seeds`` values whose sample
    standard deviation is ``std``: t_{0.975, seeds-1} · std / sqrt(seeds); None below two."""
    if seeds < 2 or not np.isfinite(std):
        return None
    return float(stats.t.ppf(0.5 + CONFIDENCE / 2, seeds - 1) * std / np.sqrt(seeds))


def clips_half_width(a: float, b: float, clips_a: int, clips_b: int) -> float:
    """Half-width of the 95 % normal interval of ``a - b``, two accuracies in percent measured
    on ``clips_a`` and ``clips_b`` clips (a difference of two proportions)."""
    p, q = a / 100, b / 100
    spread = np.sqrt(max(p * (1 - p), 0.0) / clips_a + max(q * (1 - q), 0.0) / clips_b)
    return float(100 * stats.norm.ppf(0.5 + CONFIDENCE / 2) * spread)


@dataclass(frozen=True)
class Estimate:
    """An accuracy in percent: the mean over ``seeds`` seeds, the half-width of its seed
    interval (None with one seed), and the clips it was measured on (None if unknown)."""

    mean: float
    half_width: float | None = None
    seeds: int = 1
    clips: int | None = None

    def __str__(self) -> str:
        if self.half_width is None:
            return f"{self.mean:.1f} % ({self.seeds} seed{'s' if self.seeds != 1 else ''})"
        return f"{self.mean:.1f} ± {self.half_width:.1f} % ({self.seeds} seeds)"


def difference(a: Estimate, b: Estimate) -> tuple[float, float | None, str]:
    """``a - b``, the half-width of its 95 % interval and which interval that is: the wider of
    the seed one (the two seed intervals' half-widths added, so it excludes zero exactly when
    they do not overlap) and the clips one (:func:`clips_half_width`); None, "" if neither
    exists."""
    widths = {}
    if a.half_width is not None or b.half_width is not None:
        widths["seeds"] = (a.half_width or 0.0) + (b.half_width or 0.0)
    if a.clips and b.clips:
        widths["clips"] = clips_half_width(a.mean, b.mean, a.clips, b.clips)
    if not widths:
        return a.mean - b.mean, None, ""
    source = max(widths, key=widths.get)
    return a.mean - b.mean, widths[source], source


def compare(a: Estimate, b: Estimate) -> bool | None:
    """Whether ``a`` lies above ``b``: True when the interval of the difference
    (:func:`difference`) lies above zero, False when below, None when it holds zero or there
    is none."""
    delta, width, _ = difference(a, b)
    if width is None:
        return None
    return True if delta > width else False if delta < -width else None


def _difference_text(a: Estimate, b: Estimate, source_shown: bool = True) -> str:
    delta, width, source = difference(a, b)
    if width is None:
        return f"{delta:+.1f}, no interval"
    where = f"{min(a.clips, b.clips)} clips" if source == "clips" else "seeds"
    return f"{delta:+.1f} ± {width:.1f}" + (f" ({where})" if source_shown else "")


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


def _clips(table: pd.DataFrame) -> int | None:
    """The clips a table's accuracies were measured on (its ``clips`` column)."""
    if "clips" not in table.columns or table["clips"].isna().all():
        return None
    return int(table["clips"].dropna().iloc[0])


def _step(oa: pd.Series, before: str, after: str, clips: int | None) -> bool | None:
    """Whether validation OA rises from stage ``before`` to ``after`` beyond the noise."""
    return compare(Estimate(oa[after], clips=clips), Estimate(oa[before], clips=clips))


def _check_stages(table1: pd.DataFrame) -> Verdict:
    oa = _supervised_oa(table1)
    if oa is None:
        return NOT_MEASURED
    clips = _clips(table1)
    steps = [(a, b, _step(oa, a, b, clips)) for a, b in zip(oa.index, oa.index[1:])]

    def shown(a: str, b: str) -> str:
        change = _difference_text(Estimate(oa[b], clips=clips), Estimate(oa[a], clips=clips),
                                  source_shown=False)
        return f"{b} ({oa[b]:.1f} after {oa[a]:.1f}, {change})"

    falls = [shown(a, b) for a, b, rise in steps if rise is False]
    noise = [shown(a, b) for a, b, rise in steps if rise is None]
    evidence = f"OA {' → '.join(f'{v:.1f}' for v in oa)} %" + (
        f" on {clips} validation clips" if clips else ", no clip count: no interval")
    if falls:
        evidence += f"; falls at {', '.join(falls)}"
    if noise:
        evidence += f"; within the noise at {', '.join(noise)}"
    return Verdict(False if falls else None if noise else True, evidence)


def _check_cross_entropy(table1: pd.DataFrame) -> Verdict:
    oa = _supervised_oa(table1)
    if oa is None:
        return NOT_MEASURED
    before, after = TRANSFORMATION_STAGES[-1], CROSS_ENTROPY_STAGE
    clips = _clips(table1)
    change = _difference_text(Estimate(oa[after], clips=clips), Estimate(oa[before], clips=clips))
    return Verdict(_step(oa, before, after, clips),
                   f"OA {oa[before]:.1f} → {oa[after]:.1f} %, {change}")


def _estimate(table: pd.DataFrame, method: str) -> Estimate | None:
    """``method``'s OA in a Table 2 or 3. Tables written before the ``ci95`` columns give
    their interval from ``OA std`` and ``seeds``."""
    rows = table.set_index("method")
    if method not in rows.index:
        return None
    row = rows.loc[method]
    if pd.isna(row["OA"]) or row.get("seeds") == 0:  # a row without runs (not trained yet)
        return None
    seeds = int(row["seeds"]) if pd.notna(row.get("seeds")) else 1
    if "OA ci95" in row.index:
        half_width = float(row["OA ci95"]) if pd.notna(row["OA ci95"]) else None
    else:
        half_width = seed_half_width(float(row.get("OA std", np.nan)), seeds)
    clips = int(row["clips"]) if pd.notna(row.get("clips")) else None
    return Estimate(float(row["OA"]), half_width, seeds, clips)


def _versus(table: pd.DataFrame, ours: str, others: tuple[str, ...]) -> Verdict:
    mine = _estimate(table, ours)
    estimates = {name: _estimate(table, name) for name in others}
    theirs = {name: value for name, value in estimates.items() if value is not None}
    missing = [name for name, value in estimates.items() if value is None]
    if mine is None or not theirs:
        return NOT_MEASURED
    decisions = [compare(mine, other) for other in theirs.values()]
    words = {True: "above", False: "below", None: "within the noise"}
    evidence = f"OA ours {mine} vs " + "; vs ".join(
        f"{name} {other}: {_difference_text(mine, other)}, {words[decision]}"
        for (name, other), decision in zip(theirs.items(), decisions))
    if missing:
        evidence += f"; {', '.join(missing)}: no runs yet"
    for floor in table.loc[table["method"].str.endswith("(floor)"), "method"]:
        evidence += (f"; {floor.removesuffix(' (floor)')}, the floor, "
                     f"{_estimate(table, floor).mean:.1f} %")
    if False in decisions:  # below one method: the finding fails whatever the others say
        return Verdict(False, evidence)
    if missing:  # it cannot hold before every method it names is measured
        return Verdict(None, evidence, measured=False)
    return Verdict(True if all(decisions) else None, evidence)


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
    """Table ``name`` of ``folder``; one written without a ``clips`` column takes it from
    its ``name_runs.csv``."""
    path = folder / f"{name}.csv"
    if not path.is_file():
        return None
    table = pd.read_csv(path)
    runs = folder / f"{name}_runs.csv"
    if "clips" not in table.columns and runs.is_file():
        clips = pd.read_csv(runs, usecols=["clips"])["clips"].dropna()
        if not clips.empty:
            table["clips"] = int(clips.iloc[0])
    return table


def _verdicts(table1: pd.DataFrame | None = None, table2: pd.DataFrame | None = None,
              table3: pd.DataFrame | None = None,
              prototypes: pd.DataFrame | None = None) -> dict[str, Verdict]:
    return {
        "transformations": NOT_MEASURED if table1 is None else _check_transformations(table1),
        "stages": NOT_MEASURED if table1 is None else _check_stages(table1),
        "cross_entropy": NOT_MEASURED if table1 is None else _check_cross_entropy(table1),
        "supervised": NOT_MEASURED if table3 is None else _versus(
            table3, "Ours supervised", ("Direct Classification", "APNet")),
        # the paper's finding, on the paper's model: free assignment (ours holds its clusters)
        "unsupervised": NOT_MEASURED if table2 is None else _versus(
            table2, PAPERS_UNSUPERVISED, ("Autoencoder + K-means",)),
        "prototypes": NOT_MEASURED if prototypes is None else _check_prototypes(prototypes),
    }


def check_findings(folder: str | Path) -> dict[str, Verdict]:
    """The verdict of every finding on the tables in one results folder
    (``results/SCALE/DATASET/``: table1.csv, table2.csv, table3.csv, prototypes.csv)."""
    folder = Path(folder)
    return _verdicts(*(_read(folder, name)
                       for name in ("table1", "table2", "table3", "prototypes")))


def findings_markdown(table1: pd.DataFrame | None = None, table2: pd.DataFrame | None = None,
                      table3: pd.DataFrame | None = None) -> str:
    """The findings that the given tables bear on, as Markdown bullets: the finding, its
    verdict in bold, the numbers that decide it (for the Results pages, below their table);
    one that waits on a method's runs says so."""
    verdicts = _verdicts(table1, table2, table3)
    return "\n".join(f"- {finding}: **{verdicts[key].label}** ({verdicts[key].evidence})."
                      for key, finding in FINDINGS if verdicts[key] is not NOT_MEASURED)


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
