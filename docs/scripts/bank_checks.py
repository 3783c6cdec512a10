"""How far apart the instruments' sample banks sound, class by class.

For every class of the built-in instruments and every installed bank: five notes spread over
the class's range (velocity 100, held 1 s), each turned into its time-averaged log-Mel frame
with the level removed (the frame minus its mean). Two banks are compared by the RMS
difference of those shapes in dB, averaged over the five pitches, and by their cosine. A
difference of a few dB is a twin (the same recordings); different instruments differ by 8 dB
and more. Also: whether velocity changes the timbre (a real velocity layer) or only the level.

With ``--siblings``: the classes most confused by the classifiers instead (violin and viola,
tremolo strings and the string ensemble, ...), compared within each bank at four pitches both
play, beside each class's own difference between lineages at the same pitches: a sibling in
the same bank closer than the class in another lineage is what a classifier cannot tell
from the timbre alone.

    .venv/bin/python docs/scripts/bank_checks.py [--csv out.csv] [--siblings]
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np
import pandas as pd
import torch

from hearproto.data.banks import BANKS, open_bank
from hearproto.data.instruments import CLASSES, SAMPLE_RATE
from hearproto.frontend import LogMel

DB_PER_UNIT = 170.0  # one unit of the log-Mel scale is 17 decades of power: 170 dB


def shape(logmel: LogMel, wave: np.ndarray) -> np.ndarray:
    frame = logmel(torch.from_numpy(wave)).mean(0).numpy()
    return (frame - frame.mean()) * DB_PER_UNIT


#: Pairs of classes that the classifiers of the book confuse most (test split, seed 0).
SIBLINGS = (("violin", "viola"), ("viola", "cello"), ("cello", "contrabass"),
            ("tremolo_strings", "string_ensemble"), ("english_horn", "oboe"),
            ("flute", "piccolo"), ("tenor_sax", "baritone_sax"), ("alto_sax", "tenor_sax"),
            ("clarinet", "oboe"))


def siblings(logmel: LogMel, players: dict) -> pd.DataFrame:
    """Per pair of :data:`SIBLINGS`: the two classes' difference in each bank that has both,
    at four pitches both play, and the median over pairs of lineages of each class's own
    difference at those pitches, ``first`` and ``second`` of the pair (dB RMS, level removed,
    as :func:`shape`)."""
    rows = []
    for a, b in SIBLINGS:
        low, high = max(CLASSES[a].low, CLASSES[b].low), min(CLASSES[a].high, CLASSES[b].high)
        pitches = np.unique(np.linspace(low, high, 4).round().astype(int))

        def notes(bank: str, name: str) -> np.ndarray:
            return np.stack([shape(logmel, players[bank].render(CLASSES[name].program, int(p),
                                                                100, 1.0, 1.5))
                             for p in pitches])

        def apart(x: np.ndarray, y: np.ndarray) -> float:
            return float(np.sqrt(np.mean((x - y) ** 2, axis=1)).mean())

        have = {name: {bank: notes(bank, name) for bank, player in players.items()
                       if player.has(CLASSES[name].program)} for name in (a, b)}
        row = {"pair": f"{a} / {b}", "pitches": f"{low}-{high}"}
        row.update({bank: apart(have[a][bank], have[b][bank]) if bank in have[a]
                    and bank in have[b] else np.nan for bank in players})
        for which, name in (("first", a), ("second", b)):
            lineages = {}  # the first bank of each lineage
            for bank, x in have[name].items():
                lineages.setdefault(BANKS[bank].lineage, x)
            row[f"{which} across lineages"] = float(np.median(
                [apart(x, y) for x, y in itertools.combinations(lineages.values(), 2)]))
        rows.append(row)
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--csv")
    parser.add_argument("--siblings", action="store_true")
    args = parser.parse_args()
    logmel = LogMel.for_instruments()
    players = {name: open_bank(name, SAMPLE_RATE) for name in BANKS}
    if args.siblings:
        print(siblings(logmel, players).round(1).to_markdown(index=False))
        return
    rows = []
    for name, spec in CLASSES.items():
        pitches = np.unique(np.linspace(spec.low + 2, spec.high - 2, 5).round().astype(int))
        shapes, layers = {}, {}
        for bank, player in players.items():
            if not player.has(spec.program):
                continue
            shapes[bank] = np.stack([shape(logmel, player.render(spec.program, int(p), 100,
                                                                 1.0, 1.5)) for p in pitches])
            middle = int(pitches[len(pitches) // 2])
            soft, loud = (shape(logmel, player.render(spec.program, middle, v, 1.0, 1.5))
                          for v in (40, 120))
            layers[bank] = float(np.sqrt(np.mean((soft - loud) ** 2)))
        for a, b in itertools.combinations(shapes, 2):
            difference = np.sqrt(np.mean((shapes[a] - shapes[b]) ** 2, axis=1)).mean()
            cosine = np.mean([x @ y / np.linalg.norm(x) / np.linalg.norm(y)
                              for x, y in zip(shapes[a], shapes[b])])
            rows.append({"class": name, "pair": f"{a}-{b}", "difference_db": difference,
                         "cosine": cosine})
        rows += [{"class": name, "pair": f"{bank} velocity 40-120", "difference_db": d,
                  "cosine": np.nan} for bank, d in layers.items()]
    table = pd.DataFrame(rows)
    pairs = table[~table["pair"].str.contains("velocity")].pivot(
        index="class", columns="pair", values="difference_db")
    print("Level-free difference of the mean log-Mel shape between banks (dB RMS; a twin is a "
          "few dB):")
    print(pairs.round(1).to_string())
    print("\nMedian over classes:")
    print(pairs.median().round(1).to_string())
    velocity = table[table["pair"].str.contains("velocity")].pivot(
        index="class", columns="pair", values="difference_db")
    print("\nTimbre change between velocities 40 and 120 (dB RMS, level removed):")
    print(velocity.round(1).to_string())
    if args.csv:
        table.to_csv(args.csv, index=False)


if __name__ == "__main__":
    main()
