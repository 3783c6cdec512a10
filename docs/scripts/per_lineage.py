"""Where do the instruments' classifiers fail? Test OA per lineage and per bank of samples.

    .venv/bin/python docs/scripts/per_lineage.py [--methods ours-supervised,direct] [--seeds 0,1,2]

For each finished or shipped run of the ``full`` scale on the random split, the test clips'
predictions (those stored when the run was shipped, else evaluated) are grouped by the
lineage and the bank that rendered each clip. Prints one Markdown table: a row per run, a
column per lineage and per bank, with each group's clip count in the header.
"""

from __future__ import annotations

import argparse

import pandas as pd

from hearproto.runner.confusions import predictions_on_test
from hearproto.runner.runs import run_config
from hearproto.runner.tables import _finished_run


def per_group(method: str, seed: int) -> dict[str, float] | None:
    run = _finished_run(run_config(method, "instruments", "full", seed))
    if run is None:
        return None
    checkpoint = run / ("last.pt" if method.startswith("ours-") else "best.pt")
    predictions = predictions_on_test(checkpoint)
    test = predictions.data.table[predictions.data.table["split"] == "test"].reset_index()
    if len(test) != len(predictions.table):
        raise RuntimeError(f"{checkpoint}: {len(predictions.table)} predictions, "
                           f"{len(test)} test clips in the table")
    right = predictions.table["label"].to_numpy() == predictions.table["predicted"].to_numpy()
    test = test.assign(right=right)
    row = {"run": f"{method} seed {seed}", "all": 100 * test["right"].mean()}
    for column in ("lineage", "bank"):
        for group, part in test.groupby(column):
            row[f"{column} {group} ({len(part)})"] = 100 * part["right"].mean()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default="ours-supervised,direct")
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()
    rows = [per_group(method, int(seed)) for method in args.methods.split(",")
            for seed in args.seeds.split(",")]
    print(pd.DataFrame([r for r in rows if r]).round(1).to_markdown(index=False))


if __name__ == "__main__":
    main()
