#!/usr/bin/env bash
# Fill benchmarks/wheels/ (ignored by git) with the Python wheels that benchmarks/gpu.sh installs
# on the GPU machine, which has no network. Run it here, from anywhere, with the project's venv:
#
#     bash benchmarks/fetch_wheels.sh               # download + build the wheels, write commit.txt
#     bash benchmarks/fetch_wheels.sh --stamp-only  # only rewrite commit.txt (before each `run`)
#
# What is carried, and why. The GPU machine (Python 3.12.3, torch 2.11.0+cu130, Triton 3.6.0)
# already has torch, triton, accelerate, tokenizers, safetensors, huggingface_hub, numpy, pandas,
# pyarrow, xxhash, tensorboard, matplotlib, pyyaml, tqdm, einops, msgpack, ninja, psutil,
# py-cpuinfo, typer, h5py, scipy, torchvision, torchaudio and pytest-xdist (docs/gpu-results.md,
# /work/.library/device/KINDS.md). It lacks, or has older versions of, the packages below; their
# versions are the ones installed in this project's venv (tested here). Wheels are fetched for
# CPython 3.12 on manylinux x86_64, whatever this machine runs; DeepSpeed has only a source
# release on PyPI, so its wheel is built here (pure Python: DS_BUILD_OPS=0, the ops it needs are
# JIT-built on first use, and the trainer uses torch's AdamW, so none is). Each package appears
# once: two versions of one package stop `pip install` on the device.
#
# setuptools goes to wheels/build-only/: gpu.sh uses it only for the editable install of
# spikelm (pip --no-build-isolation), never on the run's PYTHONPATH.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
DEST="$HERE/wheels"
PY="${PYTHON:-$REPO/.venv/bin/python}"
[ -x "$PY" ] || PY=python3

stamp() {
    # The commit the GPU run measures: the device copy of the tree has no .git, so gpu.sh reads it here.
    mkdir -p "$DEST"
    {
        echo "commit $(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)"
        echo "stamped $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
        echo "uncommitted changes (git status --short):"
        git -C "$REPO" status --short 2>/dev/null | sed 's/^/    /'
    } > "$DEST/commit.txt"
    echo "wrote $DEST/commit.txt ($(head -1 "$DEST/commit.txt"))"
}

if [ "${1:-}" = "--stamp-only" ]; then
    stamp
    exit 0
fi

# name==version, one a line; CPython 3.12 manylinux wheels (pure-Python where the package is)
PINS=(
    transformers==5.23.0       # the device has 5.17; the project pins 5.23
    datasets==5.2.0
    dill==0.4.1                # datasets
    multiprocess==0.70.19      # datasets
    fsspec==2026.9.0           # datasets wants <=2026.9.0
    peft==0.21.2
    jsonargparse==4.53.0       # the CLI, with its [signatures] extra:
    docstring-parser==0.18.0
    typeshed-client==2.15.0
    hjson==3.1.0               # DeepSpeed
    pydantic==2.14.4           # DeepSpeed; pydantic and pydantic-core must match exactly
    pydantic-core==2.50.5
    annotated-types==0.8.0
    typing-inspection==0.4.5
    typing-extensions==4.16.0  # pydantic wants >=4.16
    regex==2026.11.19          # transformers wants >=2025.10.22
    fla-core==0.6.0            # fla.ops (chunk_gla); the flash-linear-attention models are not needed
    spikingjelly==2.0.0
    loguru==0.7.3              # spikingjelly
    scienceplots==2.2.2        # spikingjelly
)
PLATFORM_ARGS=(--only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none
               --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
               --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)

rm -rf "$DEST"
mkdir -p "$DEST/build-only"
echo "downloading ${#PINS[@]} wheels into $DEST"
"$PY" -m pip download -q --no-deps "${PLATFORM_ARGS[@]}" -d "$DEST" "${PINS[@]%%#*}" 2>&1 | grep -v "is ignored" || true
"$PY" -m pip download -q --no-deps "${PLATFORM_ARGS[@]}" -d "$DEST/build-only" setuptools==84.2.1 2>&1 \
    | grep -v "is ignored" || true

echo "building the DeepSpeed 0.19.8 wheel (pure Python, DS_BUILD_OPS=0; needs torch in $PY)"
DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$DEST" deepspeed==0.19.8 2>&1 \
    | grep -v "is ignored" || true

# every pin present, each package once
missing=0
for pin in "${PINS[@]%%#*}" deepspeed==0.19.8; do
    name="${pin%%==*}"
    file_name="$(echo "$name" | tr '-' '_')"
    n=$(find "$DEST" -maxdepth 1 -iname "${file_name}-*.whl" | wc -l)
    if [ "$n" -ne 1 ]; then
        echo "ERROR: $n wheels for $name in $DEST" >&2
        missing=1
    fi
done
[ -f "$(find "$DEST/build-only" -name 'setuptools-*.whl' | head -1)" ] || { echo "ERROR: no setuptools wheel" >&2; missing=1; }
[ "$missing" -eq 0 ] || exit 1

stamp
echo "wheels:"
find "$DEST" -name '*.whl' -printf '%10s  %P\n' | sort -k2
echo "total: $(du -sb "$DEST" | cut -f1) bytes ($(du -sh "$DEST" | cut -f1)); the tree and the carried paths travel in 64 MiB"
