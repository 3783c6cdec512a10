"""LibriSpeech: speaker identification on a local copy, the top speakers by total duration.

Accepts the tree as distributed (``SPEAKER/CHAPTER/SPEAKER-CHAPTER-UTT.flac``) or any
arrangement of files named ``SPEAKER-CHAPTER-UTT.flac`` (flat, or in speaker folders): the
speaker is read from the file name. As in the paper (the 128 predominant speakers of
train-clean-360), only the ``n_speakers`` speakers with the most audio are kept.
"""

from __future__ import annotations

import re
import tarfile
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import pandas as pd
import soundfile as sf
from tqdm.auto import tqdm

from hearproto.data.folder import list_audio_files

__all__ = ["SUBSETS", "index_librispeech", "download", "DOWNLOAD_URL"]

FILE_NAME = re.compile(r"^(?P<speaker>\d+)-(?P<chapter>\d+)-(?P<utterance>\d+)$")
SUBSETS = ("dev-clean", "dev-other", "test-clean", "test-other", "train-clean-100",
           "train-clean-360", "train-other-500")
#: Official mirror of the corpus (resource 12 of OpenSLR); ``{subset}`` is filled in.
DOWNLOAD_URL = "https://www.openslr.org/resources/12/{subset}.tar.gz"


def index_librispeech(root: Path, n_speakers: int | None = 128,
                      progress: bool = True) -> pd.DataFrame:
    """Files of the ``n_speakers`` speakers with the longest total duration (all speakers when
    ``None``). Columns: ``path``, ``label`` (speaker id), ``chapter``, ``seconds``."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"{root}: no such folder. Pass a LibriSpeech copy as root (e.g. the folder "
            f"holding train-clean-360/), or fetch an official subset with download= "
            f"(`hearproto data prepare librispeech --root DIR --download train-clean-100`) "
            f"on a machine that is online.")
    rows, misnamed = [], []
    for path in tqdm(list_audio_files(root), desc="indexing LibriSpeech", unit="file",
                     leave=False, disable=not progress):
        match = FILE_NAME.match(path.stem)
        if match is None:
            misnamed.append(path.relative_to(root).as_posix())
            continue
        try:
            seconds = sf.info(path).duration
        except Exception:  # unreadable headers are reported by the feature pass
            seconds = 0.0
        rows.append({"path": path.relative_to(root).as_posix(), "label": match["speaker"],
                     "chapter": match["chapter"], "seconds": seconds})
    if misnamed:
        warnings.warn(f"{root}: {len(misnamed)} file(s) not named SPEAKER-CHAPTER-UTT were "
                      f"ignored: {', '.join(misnamed[:10])}", stacklevel=2)
    if not rows:
        raise FileNotFoundError(f"{root}: no LibriSpeech files (SPEAKER-CHAPTER-UTT.flac) found")
    table = pd.DataFrame(rows)
    if n_speakers is not None:
        if n_speakers < 1:
            raise ValueError(f"n_speakers must be positive or None (all), got {n_speakers}")
        totals = table.groupby("label")["seconds"].sum()
        # ties broken by speaker id, so the choice is the same on every machine
        ranked = sorted(totals.index, key=lambda s: (-totals[s], int(s)))
        table = table[table["label"].isin(ranked[:n_speakers])]
    return table.reset_index(drop=True)


def download(subset: str, root: Path, timeout: float = 20.0) -> Path:
    """Fetch and unpack an official subset into ``root`` (needs a network connection).

    Fails fast with a clear message when the machine is offline; never hangs.
    """
    if subset not in SUBSETS:
        raise ValueError(f"unknown LibriSpeech subset {subset!r}; choose one of {', '.join(SUBSETS)}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    url = DOWNLOAD_URL.format(subset=subset)
    archive = root / f".{subset}.tar.gz.part"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(archive, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {subset}") as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        archive.unlink(missing_ok=True)
        raise ConnectionError(
            f"could not download LibriSpeech {subset} from {url} ({err}). This machine seems "
            f"offline: download it elsewhere, unpack it, and pass its folder as root."
        ) from None
    with tarfile.open(archive) as tar:
        tar.extractall(root, filter="data")
    archive.unlink()
    return root
