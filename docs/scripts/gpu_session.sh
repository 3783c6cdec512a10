#!/usr/bin/env bash
# Everything issue 14 asks of a GPU, as two prepared device calls (docs/kernels.md, "CUDA graphs").
#
#   bash docs/scripts/gpu_session.sh fetch     # here, with the registries: wheels + authors' code
#   bash docs/scripts/gpu_session.sh bench     # there: the speed figures, at most 550 s
#   bash docs/scripts/gpu_session.sh tests     # there: the test suite, at most 280 s
#
# The two, with the machine's start, fill the 15 device minutes a session gets. Run `tests`
# even with less left than it needs: its log has a line per test, so a run the lease cuts
# short still comes back with what passed and what failed.
#
# `fetch` puts into .gpu/ (ignored by git: it adds `/.gpu/` to .git/info/exclude) the wheels
# the GPU image lacks (librosa, soundfile and their needs; the instruments' renderer;
# omegaconf and hydra-core for the authors' code; not espeak-ng's 10 MB nor the instruments'
# 270 MB of sample banks, so the tests that generate either dataset are left out there: the
# tree and the wheels must stay under the device's 64 MiB; 12 MB in all), a copy of the authors'
# repository from $AUTHORS (a git directory or a checkout: the `fetch` tool's
# github:romainloiseau/a-model-you-can-hear) and refbench.py.
# Call the device with carry [".gpu"] and the command `bash docs/scripts/gpu_session.sh bench`,
# then at once (the machine stays warm 30 s) with `... tests`. At most 8 files come back from
# each call's $OUT; each writes env.txt and:
#
#   env.txt            python, torch, triton, the GPU
#   bench_fp32.json    B = 128, both shapes, fused kernel, graphs off and on, cuDNN's
#                      autotuner off and on, the authors timed in the same run (refbench.py)
#   bench_bf16.json    the same with bf16 autocast
#   profile.txt        the 15 costliest operations of a step, graphs off and on (device time)
#   bench_default.txt  `hearproto bench --device cuda` with its defaults, twice, and their wall
#                      times (the issue's "under 60 s after the first compile": the second)
#   graphs_train.txt   a short training run eager and with --cuda-graphs: epoch times, losses
#   tiles.txt          the error alone: forward, backward, and backward without the
#                      prototypes' gradient (its atomic adds), per tile and backward split
#   tests.log          (tests) the whole suite on the GPU, but the book's and the browser's
#                      (no notebook stack there) and the speakers' (no espeak-ng)
set -uo pipefail
cd "$(dirname "$0")/../.."
here=.gpu

fetch() {
    mkdir -p "$here/wheels"
    grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
    local platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
                     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
                     --platform manylinux1_x86_64 --platform any)
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp "${platforms[@]}" -d "$here/wheels" \
        librosa==0.11.0 soundfile==0.14.0 soxr==1.1.0 audioread pooch platformdirs decorator \
        "omegaconf<2.4" hydra-core cffi pycparser nbformat fastjsonschema \
        jsonschema jsonschema-specifications referencing rpds-py jupyter_core traitlets \
        tinysoundfont==0.3.7 \
        2>&1 | grep -v "is ignored: it is neither" || true
    # omegaconf's parser runtime is published as source only: a pure-Python wheel built here
    python3 -m pip wheel --quiet --no-deps -w "$here/wheels" antlr4-python3-runtime==4.9.3 \
        2>&1 | grep -v "is ignored: it is neither" || true
    local authors=${AUTHORS:-}
    if [[ -n $authors ]]; then
        rm -rf "$here/authors" && mkdir -p "$here/authors"
        if [[ -d $authors/.git || -f $authors/HEAD ]]; then  # a checkout, or a bare git dir
            git --git-dir "$( [[ -d $authors/.git ]] && echo "$authors/.git" || echo "$authors")" \
                archive HEAD | tar -x -C "$here/authors"
        else
            cp -r "$authors"/. "$here/authors"
        fi
    fi
    cp ../shared/tools/refbench.py "$here/" 2>/dev/null || echo "no ../shared/tools/refbench.py"
    du -sh "$here"
}

setup() {
    export PYTHONUNBUFFERED=1
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "$here"/wheels/*.whl 2>&1 | tail -2
    export PYTHONPATH=/tmp/site:$PWD
    {
        python3 -c "import sys, torch, triton; print(sys.version); \
                    print('torch', torch.__version__, 'cuda', torch.version.cuda); \
                    print('triton', triton.__version__, torch.cuda.get_device_name())"
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv
    } > "$out/env.txt" 2>&1
}

bench() {  # in order of importance, each bounded: at most 550 s of the call's 600
    local reference=()
    [[ -d $here/authors/amodelyoucanhear && -f $here/refbench.py ]] &&
        reference=(--reference "$here/authors" --refbench "$here/refbench.py")
    local rows=(python3 -m hearproto.cli bench --device cuda --batch-sizes 128 --kernels fused
                --repeats 20 --graphs off,on --cudnn-benchmark off,on)
    timeout 150 "${rows[@]}" "${reference[@]}" --json > "$out/bench_fp32.json" 2>&1
    timeout 60 "${rows[@]}" --bf16 --json > "$out/bench_bf16.json" 2>&1
    timeout 80 python3 docs/scripts/graphs_train.py > "$out/graphs_train.txt" 2>&1
    timeout 60 python3 docs/scripts/triton_tiles.py --tiles 8x4,16x8 --parts --no-torch-path \
        > "$out/tiles.txt" 2>&1
    timeout 50 python3 -m hearproto.cli bench --device cuda --batch-sizes 128 --kernels fused \
        --repeats 5 --profile 15 --graphs off,on > "$out/profile.txt" 2>&1
    # twice: the second run is the one "after the first compile" (inductor's cache on disk)
    local TIMEFORMAT="wall %R s" run limit
    for run in first:80 second:70; do  # the second over 60 s misses the target anyway
        limit=${run#*:} run=${run%:*}
        { echo "== $run run"; time timeout "$limit" python3 -m hearproto.cli bench --device cuda; } \
            >> "$out/bench_default.txt" 2>&1
    done
}

tests() {
    # -v: a line per test as it ends, so a run cut short by the lease still says which passed
    # and which failed; in parallel and with a per-test limit where the image has the plugins
    local options=(-v -p no:cacheprovider)
    python3 -c "import xdist" 2>/dev/null && options+=(-n 14)
    python3 -c "import pytest_timeout" 2>/dev/null && options+=(--timeout 120)
    timeout 280 python3 -m pytest "${options[@]}" tests \
        --ignore tests/test_book.py --ignore tests/test_book_pages.py \
        --ignore tests/test_browser.py --ignore tests/test_speakers.py \
        --ignore tests/test_instruments.py -k "not builtin_datasets_are_deterministic" \
        > "$out/tests.log" 2>&1
    grep -E "FAILED|ERROR" "$out/tests.log" | head -20
    tail -3 "$out/tests.log"
}

case ${1:-} in
    fetch) fetch ;;
    bench|tests) out=${OUT:-/tmp/gpu-out}; mkdir -p "$out"; setup; "$1"; ls -la "$out" ;;
    *) echo "usage: $0 fetch|bench|tests" >&2; exit 2 ;;
esac
