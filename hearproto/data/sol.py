"""SOL (Studio On Line 0.9 HQ, or OrchideaSOL): instrument identification on a local copy.

The paper uses 33 instrument classes with their playing techniques. SOL is distributed as
``FAMILY/INSTRUMENT/TECHNIQUE/*.wav`` (families such as ``Brass``, ``Strings``, ``Winds``); the
class of a note is its instrument folder. A tree without the family level
(``INSTRUMENT/**/*.wav``) works too. Stereo files are averaged to mono by the audio loader.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from hearproto.data.folder import index_folder

__all__ = ["FAMILIES", "PAPER_CLASSES", "index_sol"]

#: Top-level folders of SOL 0.9 HQ and OrchideaSOL.
FAMILIES = frozenset({"Brass", "Keyboards", "PluckedStrings", "Strings", "Winds",
                      "Percussion", "Voice"})
#: Number of instrument classes in the paper's SOL experiments.
PAPER_CLASSES = 33


def index_sol(root: Path) -> pd.DataFrame:
    """Files of a SOL copy. Columns: ``path``, ``label`` (instrument), ``family``."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"{root}: no such folder. SOL cannot be downloaded automatically: obtain SOL 0.9 HQ "
            f"or OrchideaSOL from IRCAM and pass the folder holding Brass/, Strings/, Winds/ ... "
            f"as root.")
    top = {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    has_families = bool(top) and top <= FAMILIES
    table = index_folder(root, class_depth=2 if has_families else 1)
    table["family"] = [p.split("/")[0] if has_families else "" for p in table["path"]]
    return table
