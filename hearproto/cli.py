"""The ``hearproto`` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hearproto import __version__

__all__ = ["main", "build_parser"]


def _roundtrip(args: argparse.Namespace) -> int:
    from hearproto.audio import load_audio, mel_to_audio, save_audio
    from hearproto.frontend import LogMel, PRESETS

    output = Path(args.output)
    _check_output_folder(args.output, "OUTPUT")
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


SPLIT_HELP = ("random (70/10/20 per class, the default) or heldout-SOURCE: test on every clip "
              "of one source, train on the others (instruments: heldout-fluidr3, "
              "heldout-timgm6mb, heldout-freepats, the banks' lineages)")


def _n_speakers(value: str) -> int | None:
    """``--n-speakers``: a count, or ``all`` (None)."""
    return None if value == "all" else int(value)


def _experiments_run(args: argparse.Namespace) -> int:
    import os

    from hearproto.runner.experiments import run_experiments

    if args.retrain:  # read by the runs cache in the notebooks' kernels
        os.environ["HEARPROTO_RETRAIN"] = "1"
    extra = {"device": args.device} if args.device != "auto" else {}
    if args.data_root and (not args.datasets or "," in args.datasets):
        raise ValueError("--data-root needs exactly one dataset in --datasets (the one stored "
                         "there), e.g. --datasets librispeech")
    if args.data_root:
        extra["data_root"] = str(Path(args.data_root).resolve())
    if args.n_speakers:
        extra["n_speakers"] = _n_speakers(args.n_speakers)
    results_dir = None if args.checked_outputs_only or args.no_results else Path(args.results_dir)
    only = [name for value in args.only or [] for name in value.split(",") if name]
    runs = run_experiments(
        names=only or None, scale=args.scale, experiments_dir=Path(args.experiments_dir),
        output_dir=Path(args.output_dir), force=args.force or args.retrain,
        checked_outputs_only=args.checked_outputs_only, extra_parameters=extra,
        datasets=args.datasets.split(",") if args.datasets else None, results_dir=results_dir,
    )
    for run in runs:
        state = f"executed in {run.seconds:.1f} s" if run.executed else "up to date, reused"
        print(f"{run.output}: {state}")
    return 0


def _seeds(args: argparse.Namespace) -> list[int]:
    """--seeds, else the seeds behind the scale's tables (HEADLINE_SEEDS)."""
    from hearproto.runner.tables import HEADLINE_SEEDS

    if args.seeds is None:
        return list(HEADLINE_SEEDS[args.scale])
    try:
        return [int(s) for s in args.seeds.split(",")]
    except ValueError:
        raise ValueError(f"--seeds {args.seeds!r}: give comma-separated integers, e.g. 0,1,2") from None


def _experiments_train(args: argparse.Namespace) -> int:
    from hearproto.runner.runs import METHODS, train_runs

    methods = args.methods.split(",") if args.methods else list(METHODS)
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"--methods: unknown {', '.join(unknown)}; choose from "
                         f"{', '.join(METHODS)}")
    shard = _shard(args.shard)
    summaries = train_runs(
        args.scale, args.datasets.split(","), methods,
        _seeds(args), args.max_minutes, args.device, args.threads,
        report=lambda line: print(line, flush=True), shard=shard,
        heldout=not args.no_heldout)
    held = "in use by another process"
    elsewhere = [s["run"] for s in summaries if s["stop_reason"] == held]
    pending = [s["run"] for s in summaries if not s["done"] and s["stop_reason"] != held]
    finished = len(summaries) - len(pending) - len(elsewhere)
    print(f"{finished} of {len(summaries)} runs finished"
          + (f"; another process held {', '.join(elsewhere)}" if elsewhere else "")
          + (f"; run the same command again to go on with: {', '.join(pending)}" if pending
             else ""))
    return 0


def _shard(text: str) -> tuple[int, int]:
    """``--shard I/N``: the I-th of N shares."""
    from hearproto.errors import SettingError

    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise SettingError("shard", f"--shard takes I/N (e.g. 2/3), got {text!r}") from None
    return index, count  # train_runs refuses an I outside 1..N


def _experiments_status(args: argparse.Namespace) -> int:
    import pandas as pd

    from hearproto.runner.runs import METHODS, runs_status

    methods = args.methods.split(",") if args.methods else list(METHODS)
    table = runs_status(args.scale, args.datasets.split(","), methods, _seeds(args),
                        heldout=not args.no_heldout)
    with pd.option_context("display.max_colwidth", 60, "display.width", 200):
        print(table.drop(columns="folder").to_string(index=False))
    counts = table["state"].value_counts()
    print(f"{len(table)} runs: " + ", ".join(f"{n} {state}" for state, n in counts.items())
          + f"; {table['minutes'].sum():.0f} minutes of training so far")
    return 0


def _experiments_ship(args: argparse.Namespace) -> int:
    from hearproto.runner.runs import METHODS, planned_runs, run_config, shipped_current
    from hearproto.runner.shipped import (default_keep, is_finished, is_unpacked, ship_run,
                                          weights_dir)

    methods = args.methods.split(",") if args.methods else list(METHODS)
    shipped = 0
    for spec in planned_runs(args.scale, args.datasets.split(","), methods, _seeds(args)):
        config = run_config(spec.method, spec.dataset, args.scale, spec.seed, split=spec.split)
        run = Path(config.out)
        if is_unpacked(run):
            print(f"{spec}: unpacked from weights/, skipped (it is shipped already)", flush=True)
            continue
        if not is_finished(run):
            if not (run / "last.pt").is_file() and shipped_current(config):
                print(f"{spec}: shipped already, from these data", flush=True)
                continue
            state = "not trained" if not (run / "last.pt").is_file() else "not finished"
            print(f"{spec}: {state}, skipped (hearproto experiments train --scale "
                  f"{args.scale} finishes it)", flush=True)
            continue
        if not args.force and shipped_current(config):
            print(f"{spec}: shipped already, from these data; skipped (--force ships it "
                  "again)", flush=True)
            continue
        keep = args.keep or default_keep(spec.method, spec.seed, spec.split)
        # a run shipped from other data under the same name is replaced
        half = {"auto": None, "float16": True, "float32": False}[args.dtype]
        sidecar = ship_run(run, args.scale, spec.dataset, half=half, overwrite=True, keep=keep)
        shipped += 1
        kept = (f"{sidecar['bytes'] / 1e6:.2f} MB {sidecar['dtype']}, "
                f"{len(sidecar['checkpoints'])} checkpoint(s)" if keep != "scores"
                else "table rows only, no weights")
        print(f"{spec}: {kept}, {len(sidecar['scores'])} stored score(s)", flush=True)
    if args.prune:  # runs no longer planned (earlier settings), or shipped from other data
        planned = {}
        for spec in planned_runs(args.scale, args.datasets.split(","), METHODS, _seeds(args)):
            config = run_config(spec.method, spec.dataset, args.scale, spec.seed,
                                split=spec.split)
            planned[Path(config.out).name] = config
        for dataset in args.datasets.split(","):
            for path in sorted((weights_dir() / args.scale / dataset).glob("*")):
                if path.suffix not in (".json", ".safetensors"):
                    continue
                why = ("no planned run of these settings" if path.stem not in planned else
                       None if shipped_current(planned[path.stem]) else
                       "shipped from other data than these")
                if why:
                    path.unlink()
                    print(f"removed {path.relative_to(weights_dir())}: {why}", flush=True)
    total = sum(p.stat().st_size for p in weights_dir().rglob("*") if p.is_file())
    print(f"{shipped} run(s) shipped; {weights_dir()} holds {total / 1e6:.1f} MB")
    return 0


def _prepare(args: argparse.Namespace):
    from hearproto.data import prepare_dataset

    n_speakers = _n_speakers(args.n_speakers)
    return prepare_dataset(
        args.name, root=args.root, limit_per_class=args.limit_per_class, seed=args.seed,
        n_speakers=n_speakers, frontend=args.preset, cache_dir=args.cache_dir,
        download=getattr(args, "download", None), splits_csv=args.splits_csv,
        progress=not getattr(args, "json", False), split=args.split,
    )


def _skipped(info: dict) -> str:
    """"3 file(s) skipped (1 too short, 2 unreadable), 40 short clip(s) extended"."""
    kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(info["skipped_by_kind"].items()))
    extended = info.get("extended", 0)
    return (f"{info['skipped']} file(s) skipped" + (f" ({kinds})" if kinds else "")
            + (f", {extended} short clip(s) extended" if extended else ""))


def _extended_line(info: dict) -> str:
    """What was done to the clips shorter than the encoder's frames, if any: one line."""
    from hearproto.data.cache import ENCODER_FRAMES

    if not info.get("extended"):
        return ""
    return (f"  short:    {info['extended']} clip(s) under {ENCODER_FRAMES} frames "
            f"({1000 * (ENCODER_FRAMES - 1) * info['hop_length'] / info['sample_rate']:.0f} ms) "
            "extended by repeating them from their start\n")


def _data_prepare(args: argparse.Namespace) -> int:
    import time

    start = time.perf_counter()
    info = _prepare(args).info()
    splits = ", ".join(f"{k} {v}" for k, v in info["splits"].items())
    print(f"{info['name']}: {info['classes']} classes, {info['clips']} clips ({splits}) at "
          f"{info['sample_rate']} Hz, {_skipped(info)}, ready in {time.perf_counter() - start:.1f} s")
    print(f"  data:     {info['root']}\n  split:    {info['split_csv']}\n"
          f"{_extended_line(info)}  features: {info['feature_cache']}")
    return 0


def _data_info(args: argparse.Namespace) -> int:
    import json

    info = _prepare(args).info()
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    splits = ", ".join(f"{k} {v}" for k, v in info["splits"].items())
    print(f"{info['name']}: {info['classes']} classes, {info['clips']} clips ({splits}) at "
          f"{info['sample_rate']} Hz; {_skipped(info)}")
    print("classes: " + ", ".join(info["class_names"]))
    return 0


def _config_settings(settings: list[str], config_class: type) -> dict:
    """``--set FIELD=VALUE`` options -> ``{field: value}``, VALUE read as JSON (else a
    string); an unknown field is an error that lists the known ones."""
    import dataclasses
    import json

    fields = {f.name for f in dataclasses.fields(config_class)}
    values = {}
    for setting in settings:
        name, sep, text = setting.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in fields:
            raise ValueError(f"--set {setting!r}: expected FIELD=VALUE with FIELD one of "
                             f"{', '.join(sorted(fields))}")
        try:
            values[name] = json.loads(text)
        except json.JSONDecodeError:
            values[name] = text
    return values


def _launch(args: argparse.Namespace) -> int:
    """``hearproto train ... --nproc N``: the same command in N processes, launched as
    ``torchrun --standalone --nproc-per-node N -m hearproto train ...`` launches them."""
    import logging
    import os
    import uuid

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import elastic_launch
    from torch.distributed.run import config_from_args, parse_args

    if args.nproc < 1:
        raise ValueError(f"--nproc must be at least 1, got {args.nproc}")
    rest, skip = [], False
    for item in args.argv:
        if skip:
            skip = False
        elif item == "--nproc":
            skip = True
        elif not item.startswith("--nproc="):
            rest.append(item)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.nproc)))
    launch = parse_args([f"--nproc-per-node={args.nproc}", "-m", "hearproto", *rest])
    # torchrun --standalone: a rendezvous of its own on this machine, on a free port
    launch.rdzv_backend, launch.rdzv_endpoint, launch.rdzv_id = ("c10d", "localhost:0",
                                                                 str(uuid.uuid4()))
    config, entrypoint, entry_args = config_from_args(launch)
    # the launcher's own log of a failure: the one line below says it
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    try:
        elastic_launch(config, entrypoint)(*entry_args)
    except ChildFailedError as err:
        rank, failure = err.get_first_failure()
        how = (f"signal {failure.signal_name()}" if failure.exitcode < 0
               else f"exit code {failure.exitcode}")
        raise RuntimeError(f"process {rank} of {args.nproc} stopped ({how}), and the others "
                           "with it; run the same command again: it resumes from the last "
                           "epoch saved") from None
    return 0


def _train(args: argparse.Namespace) -> int:
    import os

    if args.nproc and args.nproc != 1 and "WORLD_SIZE" not in os.environ:
        return _launch(args)
    try:
        return _train_here(args)
    finally:
        from hearproto.distributed import leave_world

        leave_world()


def _train_here(args: argparse.Namespace) -> int:
    common = dict(
        dataset=args.dataset, root=args.root, out=args.out, max_minutes=args.max_minutes,
        device=args.device, seed=args.seed, threads=args.threads,
        limit_per_class=args.limit_per_class, preset=args.preset,
        n_speakers=_n_speakers(args.n_speakers), split=args.split,
    )
    # options left out take the defaults of the chosen model's config
    given = {name: getattr(args, name) for name in ("epochs", "patience", "batch_size", "lr")
             if getattr(args, name) is not None}
    if args.model != "ours":
        from hearproto.baselines.trainer import BaselineConfig, train_baseline

        ours_only = args.mode != "supervised" or args.prototypes is not None \
            or args.beta_init is not None or args.recipe is not None or args.set
        if ours_only:
            raise ValueError(f"--mode, --prototypes, --recipe, --beta-init and --set belong to "
                             f"our model, not --model {args.model} (the autoencoder is scored by "
                             "K-means at evaluation)")
        summary = train_baseline(BaselineConfig(model=args.model, **common, **given),
                                 overrides=args.override)
        if not summary.get("rank"):
            print(f"{summary['out']}: {args.model}, {summary['epochs']} epochs, "
              f"{summary['stop_reason']}, {summary['minutes']} min")
        return 0
    from hearproto.training import train, TrainConfig

    if args.beta_init is not None:
        given["beta_init"] = args.beta_init
    given.update(_config_settings(args.set, TrainConfig))
    config = TrainConfig.from_recipe(args.recipe or "default", mode=args.mode,
                                     prototypes=args.prototypes, bf16=args.bf16,
                                     cuda_graphs=args.cuda_graphs,
                                     compile=not args.no_compile, **common, **given)
    summary = train(config, overrides=args.override)
    if not summary.get("rank"):
        print(f"{summary['out']}: {summary['epochs']} epochs, stage {summary['stage']}, "
          f"{summary['stop_reason']}, {summary['minutes']} min")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    import json

    from hearproto.baselines.trainer import evaluate_baseline, is_baseline_checkpoint
    from hearproto.training import evaluate_checkpoint

    if args.results:
        _check_output_folder(args.results, "--results")
    if is_baseline_checkpoint(args.checkpoint):
        scores = evaluate_baseline(args.checkpoint, split=args.split, device=args.device,
                                   root=args.root, clustering=args.kmeans, resplit=args.resplit)
    elif args.kmeans:
        raise ValueError("--kmeans applies to the baselines (apnet); our model clusters itself "
                         "(train it with --mode unsupervised)")
    else:
        scores = evaluate_checkpoint(args.checkpoint, split=args.split, device=args.device,
                                     root=args.root, resplit=args.resplit)
    if args.results:
        from hearproto.provenance import describe_device
        from hearproto.runner.results import append_rows, result_row
        from hearproto.training import read_checkpoint, resolve_device

        row = result_row(scores, read_checkpoint(args.checkpoint), args.checkpoint,
                         describe_device(resolve_device(args.device)))
        table = append_rows(args.results, [row])
        print(f"{args.results}: row {len(table)} appended", file=sys.stderr)
    if args.json:
        print(json.dumps(_json_safe(scores), indent=1, allow_nan=False))
    else:
        l_rec = "—" if scores["L_rec"] is None else f"{scores['L_rec']:.2f}"
        name = scores.get("model", "ours")
        seen = scores.get("seen_in_training", 0)
        print(f"{scores['dataset']} {name} {scores['mode']} ({scores['stage']}), "
              f"{scores['split']}: OA {scores['OA']:.1f} %, AA {scores['AA']:.1f} %, "
              f"L_rec {l_rec}" + ("" if not seen else f" ({seen} of the {scores['clips']} clips "
                                  "were training clips)") + (
                  " (an unknown number of the clips were training clips)" if seen is None
                  else ""))
    return 0


def _json_safe(scores: dict) -> dict:
    """``scores`` with every value that is not finite replaced by null, and ``null_reasons``
    saying why (JSON has no NaN)."""
    import math

    safe, reasons = {}, {}
    for key, value in scores.items():
        if isinstance(value, float) and not math.isfinite(value):
            safe[key], reasons[key] = None, f"not finite ({value})"
        else:
            safe[key] = value
    if scores.get("L_rec", 0) is None and "L_rec" not in reasons:
        reasons["L_rec"] = "this model reconstructs nothing"
    if "seen_in_training" in scores and scores["seen_in_training"] is None:
        reasons["seen_in_training"] = "the checkpoint does not record its training clips"
    return {**safe, **({"null_reasons": reasons} if reasons else {})}


def _check_output_folder(path: str, flag: str) -> None:
    """Refuse an output whose folder does not exist: a typo would otherwise make folders
    silently."""
    folder = Path(path).expanduser().parent
    if not folder.is_dir():
        raise FileNotFoundError(f"{flag} {path}: the folder {folder} does not exist; create "
                                "it first")


def _check_seconds(seconds: float) -> None:
    import math

    from hearproto.errors import SettingError

    if not (math.isfinite(seconds) and MIN_SECONDS <= seconds <= MAX_SECONDS):
        raise SettingError("seconds", f"seconds must be between {MIN_SECONDS} and "
                           f"{MAX_SECONDS:g}, got {seconds}")


#: ``play --seconds`` bounds: long enough to hear, short enough to fit in memory.
MIN_SECONDS, MAX_SECONDS = 0.1, 60.0


def _identify(args: argparse.Namespace) -> int:
    """Each file's top prototypes (a table, or JSON), and its explanation with --explain. A
    bad file is one line on stderr; the others go on (exit status 2 if any failed)."""
    import json

    from hearproto.errors import AudioError
    from hearproto.identification import explain, identify, load_model

    model, payload, label = load_model(args.model, args.device)
    payload = {**payload, "name": label}
    found, failed = [], 0
    for file in args.files:
        try:
            result = identify(file, model, top=args.top, device=args.device, payload=payload)
            if args.explain:
                folder = (Path(args.explain) if len(args.files) == 1
                          else Path(args.explain) / Path(file).stem)
                explain(file, folder, model, device=args.device, force=args.force,
                        payload=payload)
        except (AudioError, FileNotFoundError, FileExistsError) as err:
            print(f"hearproto: error: {' '.join(str(err).split())}", file=sys.stderr)
            failed += 1
            continue
        found.append(result)
        if not args.json:
            print(_identification_text(result)
                  + (f"\n  explained in {folder}/ (explain.json lists the files)"
                     if args.explain else ""))
    if args.json:
        print(json.dumps([r.to_dict() for r in found], indent=1, allow_nan=False))
    return 2 if failed else 0


def _identification_text(result) -> str:
    """One file's identification as lines: the clip, the summary table, the windows."""
    import pandas as pd

    heard = (f"{result.seconds:.2f} s, {result.frames} frames"
             + (", extended by repetition to the encoder's 16" if result.extended else ""))
    lines = [f"{result.source} ({heard}); {result.model}, {result.mode}"]
    summary = pd.DataFrame([{"rank": c.rank, "prototype": c.prototype, "name": c.name,
                             "L_rec": f"{c.L_rec:.3f}",
                             **({"probability": f"{c.probability:.3f}"}
                                if c.probability is not None else {})}
                            for c in result.summary])
    lines += ["  " + line for line in summary.to_string(index=False).splitlines()]
    if len(result.windows) > 1:
        lines.append(f"  {len(result.windows)} windows of {result.crop_frames} frames, each "
                     "one's best:")
        for window in result.windows:
            best = window.candidates[0]
            chance = "" if best.probability is None else f", p {best.probability:.2f}"
            lines.append(f"    {window.start_s:7.2f}-{window.stop_s:7.2f} s  {best.name} "
                         f"(L_rec {best.L_rec:.3f}{chance})")
    return "\n".join(lines)


def _play_apnet(args: argparse.Namespace) -> int:
    from hearproto.audio import mel_to_audio, save_audio
    from hearproto.baselines.trainer import apnet_prototype_logmels
    from hearproto.data.dataset import tile_frames

    if args.class_name is not None or (args.prototype is not None
                                       and not args.prototype.isdigit()):
        raise ValueError("APNet's prototypes have no class: choose one with --index K")
    logmels, frontend = apnet_prototype_logmels(args.checkpoint)
    index = int(args.index if args.index is not None else args.prototype)
    if not 0 <= index < len(logmels):
        raise ValueError(f"--index {index} is out of range [0, {len(logmels)})")
    frames = max(1, round(args.seconds * frontend.sample_rate / frontend.hop_length))
    logmel = tile_frames(logmels[index:index + 1], frames)[0, :frames]
    save_audio(args.out, mel_to_audio(logmel, frontend), frontend.sample_rate,
               overwrite=args.force)
    print(f"{args.out}: APNet prototype {index}, decoded ({args.seconds:.1f} s)")
    return 0


def _prototype_index(args: argparse.Namespace, classes: list[str], supervised: bool,
                     count: int) -> tuple[int, str]:
    """The prototype ``play`` asks for, and how to name it: ``--class`` (a supervised
    model's class), ``--index``, or ``--prototype`` (a class name first, else an index)."""
    named = args.class_name if args.class_name is not None else args.prototype
    if named is not None and supervised and named in classes:
        index = classes.index(named)
        return index, f"prototype {index}, class {named}"
    if args.class_name is not None:
        if not supervised:
            raise ValueError("an unsupervised model's prototypes have no class: choose one "
                             "with --index K")
        raise ValueError(f"--class {args.class_name!r} is not a class of this model "
                         f"({', '.join(classes[:8])}{', ...' if len(classes) > 8 else ''})")
    if args.index is None and not args.prototype.isdigit():
        raise ValueError(f"--prototype {args.prototype!r} is neither a class of this model "
                         f"({', '.join(classes[:5])}, ...) nor an index in [0, {count})")
    index = args.index if args.index is not None else int(args.prototype)
    if not 0 <= index < count:
        raise ValueError(f"--index {index} is out of range [0, {count})")
    return index, f"prototype {index}" + (f", class {classes[index]}" if supervised else "")


def _play(args: argparse.Namespace) -> int:
    from hearproto.audio import prototype_to_audio, save_audio
    from hearproto.baselines.trainer import is_baseline_checkpoint
    from hearproto.training import load_checkpoint

    _check_seconds(args.seconds)
    _check_output_folder(args.out, "--out")
    if Path(args.out).exists() and not args.force:
        raise FileExistsError(f"--out {args.out} exists; add --force to replace it")
    if is_baseline_checkpoint(args.checkpoint):
        return _play_apnet(args)
    model, payload = load_checkpoint(args.checkpoint)
    supervised = payload["config"]["mode"] == "supervised"
    index, name = _prototype_index(args, payload["classes"], supervised, model.num_prototypes)
    wave = prototype_to_audio(model.prototypes[index], model.frontend, seconds=args.seconds)
    save_audio(args.out, wave, model.frontend.sample_rate, overwrite=args.force)
    print(f"{args.out}: {name} ({args.seconds:.1f} s)")
    return 0


def _bench(args: argparse.Namespace) -> int:
    import json

    from hearproto.bench import format_table, run_benchmarks

    if args.growth:
        return _growth(args)
    if args.baselines:
        return _bench_baselines(args)
    report = run_benchmarks(
        device=args.device, shapes=args.shapes.split(",") if args.shapes else None,
        batch_sizes=[int(b) for b in args.batch_sizes.split(",")] if args.batch_sizes else None,
        repeats=args.repeats, k_chunk=args.k_chunk, bf16=args.bf16, threads=args.threads,
        compiled=not args.no_compile, kernels=args.kernels.split(","), reference=args.reference,
        reference_python=args.reference_python, refbench=args.refbench, profile=args.profile,
        mallocs=args.malloc.split(","), graphs=_on_off(args.graphs, "graphs"),
        cudnn_benchmarks=_on_off(args.cudnn_benchmark, "cudnn_benchmark"),
        separate={"rows": True, "together": False}.get(args.processes))
    print(json.dumps(report, indent=1) if args.json else format_table(report))
    return 0


def _bench_baselines(args: argparse.Namespace) -> int:
    """``hearproto bench --baselines METHODS``: :func:`hearproto.baselines.speed.bench_baselines`
    at the first of ``--shapes`` (its K classes and T frames) and ``--batch-sizes``."""
    import json

    from hearproto.baselines.speed import bench_baselines, format_baselines
    from hearproto.bench import SHAPES
    from hearproto.errors import SettingError
    from hearproto.training.config import BASELINES

    methods = list(BASELINES) if args.baselines == "all" else args.baselines.split(",")
    if set(methods) - set(BASELINES):
        raise SettingError("baselines", f"--baselines takes all or some of "
                           f"{','.join(BASELINES)}, got {args.baselines!r}")
    shape = (args.shapes or "sol").split(",")[0]
    if shape not in SHAPES:
        raise SettingError("shapes", f"--shapes takes {' or '.join(SHAPES)}, got {shape!r}")
    classes, frames, _ = SHAPES[shape]
    try:
        batch_size = int((args.batch_sizes or "32").split(",")[0])
    except ValueError:
        raise SettingError("batch_sizes", f"--batch-sizes takes whole numbers, got "
                           f"{args.batch_sizes!r}") from None
    report = bench_baselines(methods, batch_size, frames, classes, args.repeats, args.device,
                             args.threads)
    print(json.dumps(report, indent=1) if args.json else format_baselines(report))
    return 0


def _growth(args: argparse.Namespace) -> int:
    """``hearproto bench --growth PARTS``: :func:`hearproto.growth.run_growth`."""
    import json

    from hearproto.errors import SettingError
    from hearproto.files import data_home
    from hearproto.growth import PARTS, format_growth, run_growth

    def numbers(text: str | None, setting: str) -> list[int] | None:
        if text is None:
            return None
        try:
            return [int(v) for v in text.split(",")]
        except ValueError:
            raise SettingError(setting, f"{setting} takes comma-separated whole numbers, got "
                               f"{text!r}") from None

    parts = PARTS if args.growth == "all" else args.growth.split(",")
    if set(parts) - set(PARTS):
        raise SettingError("growth", f"--growth takes all or some of {','.join(PARTS)}, got "
                           f"{args.growth!r}")
    if args.device not in ("auto", "cpu"):
        raise SettingError("device", "the growth benchmarks run on the CPU; leave --device out")
    ddp = None
    if args.ddp:
        try:
            ddp = [tuple(int(n) for n in item.split("x")) for item in args.ddp.split(",")]
        except ValueError:
            ddp = [()]
        if any(len(pair) != 2 or min(pair) < 1 for pair in ddp):
            raise SettingError("ddp", f"--ddp takes PROCESSESxTHREADS pairs such as 1x1,2x1, "
                               f"got {args.ddp!r}")
    batch_sizes = numbers(args.batch_sizes, "batch_sizes")
    workdir = Path(args.growth_dir) if args.growth_dir else data_home() / "growth"
    workdir.mkdir(parents=True, exist_ok=True)
    report = run_growth(
        list(parts), workdir, clips=numbers(args.clips, "clips"),
        prototypes=numbers(args.prototypes, "prototypes"), frames=numbers(args.frames, "frames"),
        eval_clips=numbers(args.eval_clips, "eval_clips"),
        batch_size=batch_sizes[0] if batch_sizes else None, ddp=ddp, threads=args.threads)
    print(json.dumps(report, indent=1) if args.json else format_growth(report))
    if "data" in parts:
        print(f"(the generated clips stay in {workdir} for the next run; delete it to free the "
              "space)", file=sys.stderr)
    return 0


def _on_off(text: str, setting: str) -> list[bool]:
    """``off``, ``on`` or ``off,on`` as booleans; anything else is refused naming
    ``setting``."""
    from hearproto.errors import SettingError

    values = text.split(",")
    if any(v not in ("off", "on") for v in values):
        raise SettingError(setting, f"{setting} takes off, on or off,on, got {text!r}")
    return [v == "on" for v in values]


def _add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    from hearproto.frontend import PRESETS
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
                        help="front end (default: the dataset's; folder, sol, librispeech: the one "
                             "the files' sample rate calls for, speakers at or below 24 kHz)")
    parser.add_argument("--cache-dir", help="feature cache folder")
    parser.add_argument("--splits-csv", help="read/write the train/val/test split here")
    parser.add_argument("--split", default="random", help=SPLIT_HELP)


def build_parser() -> argparse.ArgumentParser:
    from hearproto.frontend import PRESETS
    from hearproto.data import DATASETS
    from hearproto.runner.catalogue import DEFAULT_DATASETS, EXPERIMENTS, SCALES
    from hearproto.runner.runs import METHODS
    from hearproto.runner.shipped import KEEP
    from hearproto.training.config import RECIPES, BaselineConfig, TrainConfig

    ours, paper, baseline = TrainConfig(), RECIPES["paper"], BaselineConfig()

    parser = argparse.ArgumentParser(
        prog="hearproto", description="Audio identification with playable spectral prototypes."
    )
    parser.add_argument("--version", action="version", version=f"hearproto {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error (may come anywhere on the line)")
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

    train = commands.add_parser(
        "train", help="train our prototype model or a baseline (resumes if --out has one)")
    train.add_argument("--model", choices=["ours", "direct", "autoencoder", "apnet"],
                       default="ours", help="ours (default), or a baseline of Tables 2-3")
    train.add_argument("--dataset", required=True, choices=list(DATASETS))
    train.add_argument("--root", help="data folder (see `hearproto data prepare`)")
    train.add_argument("--mode", choices=["supervised", "unsupervised"], default="supervised")
    train.add_argument("--out", required=True, help="run folder: last.pt, stages/, metrics.csv")
    train.add_argument("--epochs", type=int, help=f"epoch budget (default: ours {ours.epochs}, "
                       f"baselines {baseline.epochs})")
    train.add_argument("--max-minutes", type=float, help="time budget, over resumes")
    train.add_argument("--recipe", choices=["default", "paper"],
                       help="ours: the settings to start from (default: 'default', the one that "
                       "converges in minutes; 'paper': the paper's exactly; docs/training.md)")
    train.add_argument("--patience", type=int,
                       help="epochs without improvement that end a curriculum stage (ours, "
                       f"paper recipe, {paper['patience']}) or the run (baselines, on the "
                       f"validation score, {baseline.patience})")
    train.add_argument("--prototypes", type=int, help="K (default: the number of classes)")
    train.add_argument("--batch-size", type=int,
                       help=f"default: ours {ours.batch_size} (paper recipe "
                       f"{paper['batch_size']}), baselines {baseline.batch_size}")
    train.add_argument("--lr", type=float,
                       help=f"learning rate (default: ours {ours.lr:g} (paper recipe "
                       f"{paper['lr']:g}), baselines {baseline.lr:g})")
    train.add_argument("--beta-init", type=float,
                       help="ours, supervised: b of beta = softplus(b) (paper recipe) or exp(b), "
                       f"the inverse temperature of the cross-entropy (default {ours.beta_init:g}, the paper's; "
                       "the default recipe then calibrates beta when the cross-entropy starts)")
    train.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                       help="ours: any TrainConfig field, VALUE in JSON (repeatable), e.g. "
                       "--set ce_stage_steps=1800 --set 'held_stages=[]' (docs/training.md "
                       "lists the fields of each recipe)")
    train.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--threads", type=int, help="torch CPU threads")
    train.add_argument("--bf16", action="store_true", help="bf16 autocast on CUDA")
    train.add_argument("--cuda-graphs", action="store_true",
                       help="on CUDA, record each training step once as a CUDA graph and "
                       "replay it (the same computation, far fewer launches)")
    train.add_argument("--limit-per-class", type=int, metavar="N")
    train.add_argument("--split", default="random", help=SPLIT_HELP)
    train.add_argument("--n-speakers", default="128", metavar="K",
                       help="librispeech: the K speakers with the most audio, or 'all'")
    train.add_argument("--preset", choices=sorted(PRESETS),
                       help="front end (default: the dataset's; folder, sol, librispeech: the one "
                             "the files' sample rate calls for, speakers at or below 24 kHz)")
    train.add_argument("--no-compile", action="store_true",
                       help="eager mode instead of the torch.compile'd error")
    train.add_argument("--override", action="append", default=[], metavar="SETTING",
                       help="resuming: let SETTING (a config field, e.g. lr) differ from the "
                       "run in --out (repeatable). Budgets and devices may always change")
    train.add_argument("--nproc", type=int, metavar="N",
                       help="train data-parallel in N processes on this machine (launches "
                       "torchrun; the global batch stays --batch-size). On several machines, "
                       "run torchrun yourself: README, 'More than one process'")
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser("evaluate", help="OA, AA and L_rec of a checkpoint")
    evaluate.add_argument("--checkpoint", required=True)
    evaluate.add_argument("--split", choices=["train", "val", "test"], default="test")
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--root", help="the dataset's folder, if it moved")
    evaluate.add_argument("--resplit", action="store_true",
                          help="score data other than the checkpoint's (other files: a new "
                          "split), reporting how many clips it was trained on")
    evaluate.add_argument("--kmeans", action="store_true",
                          help="apnet: score K-means on its similarities (APNet + K-means)")
    evaluate.add_argument("--json", action="store_true")
    evaluate.add_argument("--results", metavar="FILE.csv",
                          help="also append the scores, with their provenance (commit, device, "
                               "training time, config), as a row of this CSV table")
    evaluate.set_defaults(handler=_evaluate)

    identify = commands.add_parser(
        "identify", help="which prototype each sound file is, and (--explain) why")
    identify.add_argument("files", nargs="+", metavar="FILE", help="audio files (wav, flac, ...)")
    identify.add_argument("--model", default="instruments", metavar="NAME|CHECKPOINT",
                          help="a shipped model (instruments, speakers, instruments-unsupervised, "
                               "speakers-unsupervised) or a run's last.pt or folder (default: "
                               "instruments)")
    identify.add_argument("--top", type=int, default=3, help="prototypes listed (default: 3)")
    identify.add_argument("--json", action="store_true", help="one JSON list on stdout")
    identify.add_argument("--explain", metavar="DIR",
                          help="write the sounds and the figure of the best prototype and the "
                               "runner-up here (one subfolder per file when there are several)")
    identify.add_argument("--force", action="store_true",
                          help="--explain: replace what the folder holds")
    identify.add_argument("--device", default="cpu")
    identify.set_defaults(handler=_identify)

    play = commands.add_parser("play", help="write a prototype (ours or APNet's) as sound")
    play.add_argument("--checkpoint", required=True)
    which = play.add_mutually_exclusive_group(required=True)
    which.add_argument("--class", dest="class_name", metavar="NAME",
                       help="the prototype of this class (our supervised model)")
    which.add_argument("--index", type=int, metavar="K", help="prototype K, from 0")
    which.add_argument("--prototype", metavar="NAME_OR_K",
                       help="a class name if the model has that class (class names win: "
                       "LibriSpeech's are numbers), else an index")
    play.add_argument("--out", required=True, help="FILE.wav (its folder must exist)")
    play.add_argument("--seconds", type=float, default=1.0,
                      help=f"length, {MIN_SECONDS:g} to {MAX_SECONDS:g} s (default: 1)")
    play.add_argument("--force", action="store_true", help="replace --out if it exists")
    play.set_defaults(handler=_play)

    bench = commands.add_parser("bench", help="speed and memory of one training step")
    bench.add_argument("--device", default="auto")
    bench.add_argument("--shapes", help="comma-separated: sol, librispeech (default: both)")
    bench.add_argument("--batch-sizes", help="comma-separated (default: 16,128)")
    bench.add_argument("--repeats", type=int, default=3)
    bench.add_argument("--k-chunk", type=int, default=ours.k_chunk,
                       help=f"prototypes per chunk (default: {ours.k_chunk})")
    bench.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA)")
    bench.add_argument("--threads", type=int)
    bench.add_argument("--no-compile", action="store_true",
                       help="eager mode instead of the torch.compile'd error")
    bench.add_argument("--kernels", default="fused,torch",
                       help="reconstruction errors to time side by side: fused (C on CPU, "
                       "Triton on CUDA) and/or torch (default: fused,torch)")
    bench.add_argument("--malloc", default="retain",
                       help="on the CPU, comma-separated: retain (freed memory is reused, as "
                       "training does) and/or system (glibc's default, a fresh mapping for "
                       "every large tensor) (default: retain)")
    bench.add_argument("--reference", metavar="DIR",
                       help="a checkout of the authors' repository: time their training step "
                       "in the same run (refbench.py)")
    bench.add_argument("--reference-python", metavar="PYTHON",
                       help="the Python that runs refbench.py, with omegaconf, hydra-core and "
                       "pytorch_lightning installed (default: this one)")
    bench.add_argument("--refbench", metavar="PATH",
                       help="refbench.py, the project's script that times the authors' code "
                       "(needed with --reference)")
    bench.add_argument("--profile", type=int, default=0, metavar="N",
                       help="also list the N operations that take the most time per step "
                       "(torch.profiler; device time on CUDA)")
    bench.add_argument("--graphs", default="off", metavar="off,on",
                       help="record the step as a CUDA graph and replay it: off, on, or "
                       "off,on for both rows (CUDA; default: off)")
    bench.add_argument("--cudnn-benchmark", default="off", metavar="off,on",
                       help="let cuDNN time its algorithms for the step's shapes first and keep "
                       "the fastest: off, on, or off,on (CUDA; default: off)")
    bench.add_argument("--processes", choices=("auto", "rows", "together"), default="auto",
                       help="a fresh process per row (CPU default: its own peak memory) or "
                       "all rows together (CUDA default: CUDA starts once)")
    growth = bench.add_argument_group(
        "growth", "how each cost grows (each point in a fresh process; docs/scale.md)")
    growth.add_argument("--growth", metavar="PARTS",
                        help="measure these instead of the step table: all, or some of data "
                        "(preparing N generated clips), step (K x T), eval (clips x K), ddp "
                        "(1 and 2 processes), comma-separated")
    growth.add_argument("--clips", metavar="N,N", help="data: clips (default: 1000,10000,100000)")
    growth.add_argument("--prototypes", metavar="K,K",
                        help="step and eval: prototypes (default: 33,128,512)")
    growth.add_argument("--frames", metavar="T,T",
                        help="step: crop frames (default: 128,256,512,1024)")
    growth.add_argument("--eval-clips", metavar="N,N",
                        help="eval: clips of 128 frames (default: 250,1000,4000)")
    growth.add_argument("--ddp", metavar="PxH,PxH",
                        help="ddp: processes x threads each (default: 1x1,1x2,2x1)")
    growth.add_argument("--growth-dir", metavar="DIR",
                        help="data: where the generated clips are kept for the next run "
                        "(default: growth/ in the data home)")
    bench.add_argument("--baselines", metavar="METHODS",
                       help="instead of the step table, a training step of these baselines "
                       "(all, or some of direct,autoencoder,apnet) in the default and the "
                       "channels-last layout, side by side; the first of --shapes and "
                       "--batch-sizes (default: sol, 32)")
    bench.add_argument("--json", action="store_true")
    bench.set_defaults(handler=_bench)

    experiments = commands.add_parser("experiments", help="run the experiment notebooks")
    experiment_commands = experiments.add_subparsers(dest="action", required=True, metavar="ACTION")
    run = experiment_commands.add_parser(
        "run", help="execute notebooks with papermill into book/ (reusing unchanged ones)"
    )
    run.add_argument("--scale", choices=SCALES, default="full",
                     help="ci: seconds; small: minutes on a CPU; full (default): the built-in "
                          "datasets whole, the book's (its runs ship in weights/); paper: a GPU")
    run.add_argument("--only", nargs="+", metavar="NAME",
                     help=f"run only these, space- or comma-separated ({', '.join(EXPERIMENTS)}; "
                          "reproduce runs last and reads the per-dataset provenance)")
    run.add_argument("--datasets", metavar="A,B",
                     help=f"datasets of the per-dataset notebooks (default: "
                          f"{','.join(DEFAULT_DATASETS)})")
    run.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    run.add_argument("--data-root", help="the dataset's folder (real datasets: sol, "
                                         "librispeech, folder); one dataset at a time")
    run.add_argument("--n-speakers", help="librispeech: keep the N speakers with the most "
                                          "audio, or 'all' (default: 128)")
    run.add_argument("--results-dir", default="results",
                     help="tables go to RESULTS_DIR/SCALE/DATASET/ (default: results)")
    run.add_argument("--no-results", action="store_true", help="write no tables")
    run.add_argument("--experiments-dir", default="experiments", help="templates (default: experiments)")
    run.add_argument("--output-dir", default="book", help="executed copies (default: book)")
    run.add_argument("--force", action="store_true", help="execute even when up to date")
    run.add_argument("--retrain", action="store_true",
                     help="train every run afresh instead of using the runs weights/ ships")
    run.add_argument("--checked-outputs-only", action="store_true",
                     help="keep only outputs tagged nbval-check-output (nbval references)")
    run.set_defaults(handler=_experiments_run)
    trainer = experiment_commands.add_parser(
        "train", help="train (or resume) the runs the notebooks need, within a time budget")
    trainer.add_argument("--scale", choices=SCALES, default="full",
                         help="the runs of this scale (default: full, those the book ships)")
    trainer.add_argument("--datasets", default=",".join(DEFAULT_DATASETS), metavar="A,B",
                         help=f"default: {','.join(DEFAULT_DATASETS)}")
    trainer.add_argument("--methods", metavar="M,N",
                         help=f"default: all ({', '.join(METHODS)})")
    trainer.add_argument("--seeds", help="comma-separated (default: those behind the scale's "
                         "Tables 2 and 3; 0 for full, 0,1,2 for small and paper)")
    trainer.add_argument("--max-minutes", type=float,
                         help="time budget for all the runs; a run it cuts resumes next time")
    trainer.add_argument("--device", default="auto")
    trainer.add_argument("--threads", type=int, help="torch CPU threads")
    trainer.add_argument("--shard", default="1/1", metavar="I/N",
                         help="train only the I-th of N disjoint shares of the runs, so that N "
                         "processes or machines share them (default: 1/1, all)")
    trainer.add_argument("--no-heldout", action="store_true",
                         help="leave out the held-out splits (the unseen-bank runs)")
    trainer.set_defaults(handler=_experiments_train)
    status = _run_selection(experiment_commands.add_parser(
        "status", help="the state of every run `experiments train` would train (reads only)"))
    status.add_argument("--no-heldout", action="store_true",
                        help="leave out the held-out splits (the unseen-bank runs)")
    status.set_defaults(handler=_experiments_status)
    ship = _run_selection(experiment_commands.add_parser(
        "ship", help="write finished runs into weights/ (safetensors + JSON), for the book"))
    ship.add_argument("--keep", choices=KEEP,
                      help="every checkpoint, the one the tables evaluate, or its test scores "
                           "alone (default: all for our seed-0 runs, scores for APNet, "
                           "evaluated otherwise)")
    ship.add_argument("--force", action="store_true",
                      help="ship again the runs weights/ already ships from these data (a run "
                           "shipped from other data is always replaced)")
    ship.add_argument("--dtype", choices=("auto", "float16", "float32"), default="auto",
                      help="auto (default): float16 for each checkpoint whose validation "
                           "scores it leaves unchanged, which evaluates every checkpoint "
                           "twice; float32: no such check (larger files, shipped sooner: an "
                           "unsupervised checkpoint's every evaluation reads all the training "
                           "clips); float16: unchecked")
    ship.add_argument("--prune", action="store_true",
                      help="remove the shipped runs of these datasets that no planned run of "
                           "any method for these seeds names (runs of earlier settings), and "
                           "those shipped from other data than these")
    ship.set_defaults(handler=_experiments_ship)
    return parser


def _run_selection(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``parser`` with the options that select runs: scale, datasets, methods, seeds."""
    from hearproto.runner.catalogue import DEFAULT_DATASETS, SCALES

    parser.add_argument("--scale", choices=SCALES, default="full")
    parser.add_argument("--datasets", default=",".join(DEFAULT_DATASETS), metavar="A,B")
    parser.add_argument("--methods", metavar="M,N", help="default: all")
    parser.add_argument("--seeds", help="comma-separated (default: as for train)")
    return parser


def _one_line_warnings(message, category, filename, lineno, line=None) -> str:
    return f"hearproto: warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    """Run the command line. A refusal (bad input, settings or files) prints one line on
    stderr and returns 2; ``--debug`` (anywhere) shows its traceback instead."""
    import warnings

    from hearproto.errors import DatasetError, RunMismatch, SettingError

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    args = build_parser().parse_args([a for a in argv if a != "--debug"])
    args.argv = argv
    formatwarning = warnings.formatwarning
    if not debug:
        warnings.formatwarning = _one_line_warnings
    try:
        code = args.handler(args)
        sys.stdout.flush()  # here, so that a reader who has gone is seen below
        return code
    except BrokenPipeError:  # the reader stopped early (`| head`): end quietly, as tools do
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141  # what the shell reports for a program ended by SIGPIPE
    except KeyboardInterrupt:
        if debug:
            raise
        print("hearproto: interrupted (a training resumes from its last epoch with the same "
              "command)", file=sys.stderr)
        return 130
    except (ValueError, OSError, ConnectionError, ImportError, RuntimeError) as err:
        if debug:
            raise
        if isinstance(err, SettingError):
            hint = f" (--{err.setting.replace('_', '-')})"
        elif isinstance(err, RunMismatch):
            hint = " (another folder: --out DIR; a change: --override SETTING)"
        elif isinstance(err, DatasetError):
            hint = " (the data folder: --root DIR)"
        else:
            hint = ""
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"hearproto: error: {message}{hint}", file=sys.stderr)
        return 2
    finally:
        warnings.formatwarning = formatwarning


if __name__ == "__main__":
    sys.exit(main())
