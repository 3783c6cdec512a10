"""The ``hearproto`` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hearproto import __version__

__all__ = ["main", "build_parser"]


def _roundtrip(args: argparse.Namespace) -> int:
    from hearproto.audio import PRESETS, LogMel, load_audio, mel_to_audio, save_audio

    output = Path(args.output)
    if output.exists() and not args.force:
        raise FileExistsError(f"{output} exists; add --force to replace it")
    frontend = PRESETS[args.preset]
    waveform = load_audio(args.input, frontend.sample_rate)
    logmel = LogMel.from_frontend(frontend)(waveform)
    sound = mel_to_audio(logmel, frontend, n_iter=args.iterations, seed=args.seed)
    save_audio(output, sound, frontend.sample_rate, overwrite=True)
    print(f"{output}: {sound.shape[-1] / frontend.sample_rate:.2f} s through the "
          f"{args.preset} front end ({logmel.shape[0]} frames x {logmel.shape[1]} mel bins)")
    return 0


def _experiments_run(args: argparse.Namespace) -> int:
    from hearproto.experiments import run_experiments

    runs = run_experiments(
        names=args.only, scale=args.scale, experiments_dir=Path(args.experiments_dir),
        output_dir=Path(args.output_dir), force=args.force,
        checked_outputs_only=args.checked_outputs_only,
    )
    for run in runs:
        state = f"executed in {run.seconds:.1f} s" if run.executed else "up to date, reused"
        print(f"{run.output}: {state}")
    return 0


def _prepare(args: argparse.Namespace):
    from hearproto.data import prepare_dataset

    n_speakers = None if args.n_speakers == "all" else int(args.n_speakers)
    return prepare_dataset(
        args.name, root=args.root, limit_per_class=args.limit_per_class, seed=args.seed,
        n_speakers=n_speakers, frontend=args.preset, cache_dir=args.cache_dir,
        download=getattr(args, "download", None), splits_csv=args.splits_csv,
        progress=not getattr(args, "json", False),
    )


def _data_prepare(args: argparse.Namespace) -> int:
    import time

    start = time.perf_counter()
    info = _prepare(args).info()
    splits = ", ".join(f"{k} {v}" for k, v in info["splits"].items())
    print(f"{info['name']}: {info['classes']} classes, {info['clips']} clips ({splits}) at "
          f"{info['sample_rate']} Hz, {info['skipped']} file(s) skipped, "
          f"ready in {time.perf_counter() - start:.1f} s")
    print(f"  data:     {info['root']}\n  split:    {info['split_csv']}\n"
          f"  features: {info['feature_cache']}")
    return 0


def _data_info(args: argparse.Namespace) -> int:
    import json

    info = _prepare(args).info()
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    print(f"{info['name']}: {info['classes']} classes, {info['clips']} clips, "
          f"{info['sample_rate']} Hz; splits {info['splits']}")
    print("classes: " + ", ".join(info["class_names"]))
    return 0


def _add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    from hearproto.audio import PRESETS
    from hearproto.data import DATASETS

    parser.add_argument("name", choices=list(DATASETS), help="dataset")
    parser.add_argument("--root", help="data folder (built-ins: where to generate; default "
                        "under $HEARPROTO_DATA or ~/.cache/hearproto)")
    parser.add_argument("--limit-per-class", type=int, metavar="N",
                        help="at most N clips per class (tiny test sets)")
    parser.add_argument("--seed", type=int, default=0, help="generation seed (default: 0)")
    parser.add_argument("--n-speakers", default="128", metavar="K",
                        help="librispeech: keep the K speakers with the most audio, or 'all' "
                        "(default: 128, as the paper)")
    parser.add_argument("--preset", choices=sorted(PRESETS),
                        help="front end (default: the dataset's; folder: instruments)")
    parser.add_argument("--cache-dir", help="feature cache folder")
    parser.add_argument("--splits-csv", help="read/write the train/val/test split here")


def build_parser() -> argparse.ArgumentParser:
    from hearproto.audio import PRESETS
    from hearproto.experiments import EXPERIMENTS, SCALES

    parser = argparse.ArgumentParser(
        prog="hearproto", description="Audio identification with playable spectral prototypes."
    )
    parser.add_argument("--version", action="version", version=f"hearproto {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    roundtrip = commands.add_parser(
        "roundtrip", help="hear what the log-Mel front end keeps: file -> log-Mel -> sound",
    )
    roundtrip.add_argument("input", help="audio file (wav, flac, mp3, ogg)")
    roundtrip.add_argument("output", help="where to write the reconstruction (.wav, .flac, ...)")
    roundtrip.add_argument("--preset", choices=sorted(PRESETS), default="speakers",
                           help="front-end settings (default: speakers)")
    roundtrip.add_argument("--iterations", type=int, default=64,
                           help="Griffin-Lim iterations (default: 64)")
    roundtrip.add_argument("--seed", type=int, default=0, help="phase seed (default: 0)")
    roundtrip.add_argument("--force", action="store_true", help="replace OUTPUT if it exists")
    roundtrip.set_defaults(handler=_roundtrip)

    data = commands.add_parser("data", help="generate, index and inspect datasets")
    data_commands = data.add_subparsers(dest="action", required=True, metavar="ACTION")
    prepare = data_commands.add_parser(
        "prepare", help="generate (built-ins) or index a dataset, split it, cache its features")
    _add_dataset_arguments(prepare)
    prepare.add_argument("--download", metavar="SUBSET",
                         help="librispeech: fetch this official subset first (needs a network)")
    prepare.set_defaults(handler=_data_prepare)
    info = data_commands.add_parser("info", help="classes, clips and splits of a dataset")
    _add_dataset_arguments(info)
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(handler=_data_info)

    experiments = commands.add_parser("experiments", help="run the experiment notebooks")
    experiment_commands = experiments.add_subparsers(dest="action", required=True, metavar="ACTION")
    run = experiment_commands.add_parser(
        "run", help="execute notebooks with papermill into book/ (reusing unchanged ones)"
    )
    run.add_argument("--scale", choices=SCALES, default="small",
                     help="ci: seconds; small: minutes on a CPU (default); paper: a GPU")
    run.add_argument("--only", nargs="+", choices=EXPERIMENTS, metavar="NAME",
                     help=f"run only these ({', '.join(EXPERIMENTS)})")
    run.add_argument("--experiments-dir", default="experiments", help="templates (default: experiments)")
    run.add_argument("--output-dir", default="book", help="executed copies (default: book)")
    run.add_argument("--force", action="store_true", help="execute even when up to date")
    run.add_argument("--checked-outputs-only", action="store_true",
                     help="keep only outputs tagged nbval-check-output (nbval references)")
    run.set_defaults(handler=_experiments_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (FileNotFoundError, FileExistsError, ValueError, ConnectionError, ImportError) as err:
        print(f"hearproto: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
