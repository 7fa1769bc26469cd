#!/usr/bin/env bash
# The GPU check of spikelm in one bounded run (issue 15, item 5): on a fresh H100/H200 machine
# with no network it installs the carried wheels (benchmarks/wheels, from fetch_wheels.sh),
# benchmarks our GLA chunk kernel against fla's chunk_gla, trains spikegpt-216m and hybrid-1b
# for 30 steps each, eager and compiled, benchmarks the LIF / WKV-4 / adaptive-spike kernels
# (SpikingJelly's Triton LIF side by side), runs `pytest -m gpu` and the step profiler (when
# spikelm/bench/step.py exists), in that order, and leaves every table under $OUT.
# benchmarks/README.md says how to run it.
#
#     bash benchmarks/gpu.sh                              # on the GPU machine ($OUT set by the tool)
#     SPIKELM_GPU_REHEARSAL=1 bash benchmarks/gpu.sh      # here, on CPU: every stage, tiny sizes
#
# Time. Every stage runs under `timeout` with its own budget (seconds, below), cut further so
# that no stage runs past the deadline (SPIKELM_GPU_DEADLINE_S after the start, default 470 s,
# so the whole script ends within 8 minutes; 900 s in the CPU rehearsal); a stage with under
# 15 s left is skipped. The
# stages are independent: one that fails or times out is recorded and the next one runs. After
# every stage, $OUT is refreshed, so a run cut short still brings back what it measured:
#
#     summary.md       stage table (stage, seconds, rc, budget, status), targets, every table
#     env.txt          device facts: nvidia-smi, Python/torch/Triton/CUDA versions, packages, commit
#     gla-bench.md     ours vs fla chunk_gla (agreement with the float32 reference, then times)
#     train.md         the 30-step runs: steady-state tokens/s and MFU, target check
#     kernels-bench.md LIF / WKV-4 / adaptive spiking, with SpikingJelly's Triton LIF
#     gpu-tests.txt    the output of pytest -m gpu
#     logs.tar.gz      every stage's log, each run's metrics.jsonl, training_summary.json, recipe.json
#
# (the device brings back at most 8 files from $OUT; these are 7.)
#
# Settings (environment): SPIKELM_GPU_REHEARSAL=1 (CPU rehearsal), SPIKELM_GPU_DEADLINE_S,
# SPIKELM_GPU_STAGES (space-separated stage names, in order; default all, in the order below),
# SPIKELM_GPU_BUDGET_<STAGE> (a stage's budget, the name upper-cased with - as _, e.g.
# SPIKELM_GPU_BUDGET_TRAIN_HYBRID_1B=120), SPIKELM_GPU_STEPS (training steps, default 30),
# SPIKELM_GPU_FLA_MAX_CONFIGS (autotuning configurations per fla kernel, default 3),
# SPIKELM_GPU_KERNEL_OPS (the kernel bench's --ops, default all six),
# SPIKELM_GPU_PYTHON (default python3; rehearsal: the repo's .venv), SPIKELM_GPU_WORK (scratch
# folder, default /tmp/spikelm-gpu), SPIKELM_GPU_STEP_ARGS (extra arguments of the step profiler).
set -uo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$REPO" || exit 2
REHEARSAL="${SPIKELM_GPU_REHEARSAL:-0}"
START=$(date +%s)
if [ "$REHEARSAL" = 1 ]; then DEFAULT_DEADLINE_S=900; else DEFAULT_DEADLINE_S=470; fi  # (CPU is slower)
DEADLINE=$((START + ${SPIKELM_GPU_DEADLINE_S:-$DEFAULT_DEADLINE_S}))
RESERVE_S=6       # kept after the last stage for the final summary
MIN_STAGE_S=15    # a stage with less time left is skipped

if [ "$REHEARSAL" = 1 ]; then
    MODE="rehearsal (CPU, tiny sizes)"
    WORK="${SPIKELM_GPU_WORK:-/tmp/spikelm-gpu-rehearsal}"
    DEFAULT_PY="$REPO/.venv/bin/python"
    [ -x "$DEFAULT_PY" ] || DEFAULT_PY="$(command -v python3)"
else
    MODE="gpu"
    WORK="${SPIKELM_GPU_WORK:-/tmp/spikelm-gpu}"
    DEFAULT_PY="$(command -v python3)"
fi
PY="${SPIKELM_GPU_PYTHON:-$DEFAULT_PY}"
OUT="${OUT:-$WORK/out}"
WHEELS="$REPO/benchmarks/wheels"

# the scratch folder is ours alone: refuse to empty a folder gpu.sh did not make
if [ -e "$WORK" ] && [ ! -e "$WORK/.spikelm-gpu-work" ] && [ -n "$(ls -A "$WORK" 2>/dev/null)" ]; then
    echo "gpu.sh: $WORK exists and was not made by gpu.sh; set SPIKELM_GPU_WORK" >&2
    exit 2
fi
rm -rf "$WORK"
mkdir -p "$WORK/logs" "$WORK/tables" "$OUT" || exit 2
touch "$WORK/.spikelm-gpu-work"
RUNS="$WORK/runs"
if [ "$REHEARSAL" != 1 ] && [ -d /dev/shm ] && \
        [ "$(df -Pk /dev/shm 2>/dev/null | awk 'NR==2 {print $4}')" -gt $((40 * 1024 * 1024)) ] 2>/dev/null; then
    RUNS="/dev/shm/spikelm-gpu-runs"  # the final checkpoints (about 14 GB for hybrid-1b) are written to memory
fi
rm -rf "$RUNS"
mkdir -p "$RUNS"

# the kernel bench's ops: issue 3's and the fused ops of issue 15 (names it does not know are skipped)
KERNEL_OPS="${SPIKELM_GPU_KERNEL_OPS:-lif,wkv4,adaptive_spike,token_shift_mix,wkv4_gated,lif_residual}"
# sizes of each mode: the GPU's, or the rehearsal's (same command lines, debug models, 2 steps)
if [ "$REHEARSAL" = 1 ]; then
    STEPS="${SPIKELM_GPU_STEPS:-2}"; WINDOW_START=1
    RECIPE_216M=debug; RECIPE_1B=hybrid-debug; VOCAB=512; VOCAB_BASE=300
    GLA_ARGS=(--interpret --no-fused --reps 1 --warmup 0)
    KERNEL_ARGS=(--quick --long 0 --reps 1 --warmup 0 --no-compile --ops "$KERNEL_OPS")
    STEP_RECIPE=debug; STEP_STEPS=1; STEP_WARMUP=1
else
    STEPS="${SPIKELM_GPU_STEPS:-30}"; WINDOW_START=10
    RECIPE_216M=spikegpt-216m; RECIPE_1B=hybrid-1b; VOCAB=50277; VOCAB_BASE=8192
    GLA_ARGS=(--no-fused --reps 10 --warmup 2)
    KERNEL_ARGS=(--no-compile --reps 3 --warmup 1 --ops "$KERNEL_OPS")
    STEP_RECIPE=spikegpt-216m; STEP_STEPS=5; STEP_WARMUP=2
fi
FLA_MAX_CONFIGS="${SPIKELM_GPU_FLA_MAX_CONFIGS:-3}"
# Torch's JIT-built extensions (DeepSpeed builds its CPU shared-memory op on a CPU-only machine:
# over a minute on 2 cores). A private folder, since a build killed by a budget leaves a lock
# file that blocks every later build there; the rehearsal keeps its own across rehearsals,
# seeded from ~/.cache/torch_extensions when that holds the built op.
if [ "$REHEARSAL" = 1 ]; then
    EXTENSIONS="${TMPDIR:-/tmp}/spikelm-gpu-rehearsal-extensions"
    mkdir -p "$EXTENSIONS"
    find "$EXTENSIONS" -name lock -delete  # ours: left by a killed rehearsal
    seed="$HOME/.cache/torch_extensions/py$("$PY" -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')_cpu/deepspeed_shm_comm"
    if [ ! -d "$EXTENSIONS/deepspeed_shm_comm" ] && [ -f "$seed/deepspeed_shm_comm.so" ]; then
        mkdir -p "$EXTENSIONS/deepspeed_shm_comm"
        find "$seed" -maxdepth 1 -type f ! -name lock -exec cp -p {} "$EXTENSIONS/deepspeed_shm_comm/" \;
    fi
else
    EXTENSIONS="$WORK/torch-extensions"
fi
TOK="$WORK/tokenizer-$VOCAB"

# what every stage runs with; setup may add to it (env.sh is sourced at the start of each stage)
cat > "$WORK/env.sh" <<EOF
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false HF_HOME="$WORK/hf" MPLCONFIGDIR="$WORK/mpl"
export TRITON_CACHE_DIR="$WORK/triton-cache" TORCHINDUCTOR_CACHE_DIR="$WORK/inductor-cache"
export TORCH_EXTENSIONS_DIR="$EXTENSIONS"
export SJ_LIF_CUDA_IMPLEMENTATION="\${SJ_LIF_CUDA_IMPLEMENTATION:-triton}"
EOF
export REPO REHEARSAL WORK PY OUT WHEELS RUNS STEPS WINDOW_START RECIPE_216M RECIPE_1B VOCAB VOCAB_BASE
export FLA_MAX_CONFIGS TOK STEP_RECIPE STEP_STEPS STEP_WARMUP
export GLA_ARGS_STR="${GLA_ARGS[*]}" KERNEL_ARGS_STR="${KERNEL_ARGS[*]}"

commit_line() {
    if git -C "$REPO" rev-parse HEAD >/dev/null 2>&1; then
        echo "commit $(git -C "$REPO" rev-parse HEAD)$(git -C "$REPO" diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')"
    elif [ -f "$WHEELS/commit.txt" ]; then
        echo "$(head -1 "$WHEELS/commit.txt") (from benchmarks/wheels/commit.txt, $(sed -n 2p "$WHEELS/commit.txt"))"
    else
        echo "commit unknown (no .git and no benchmarks/wheels/commit.txt)"
    fi
}
{
    echo "mode: $MODE"
    echo "started: $(date -u '+%Y-%m-%d %H:%M:%S UTC'); deadline $((DEADLINE - START)) s after the start"
    echo "$(commit_line)"
    echo "device: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1 || true)"
    echo "training: $STEPS steps each of $RECIPE_216M and of $RECIPE_1B (with grad_accum 1), eager and compiled; tokenizer of $VOCAB entries"
} > "$WORK/run-info.txt"
: > "$WORK/stages.tsv"  # one line per stage: name, seconds, rc, budget s, status (tab-separated)

finalize() {
    # Refresh $OUT from $WORK: quick (small files), run after every stage.
    "$PY" "$REPO/benchmarks/gpu_budget.py" summary "$WORK" "$WORK/summary.md" >/dev/null 2>&1 \
        || { cat "$WORK/run-info.txt" "$WORK/stages.tsv" > "$WORK/summary.md"; }
    cp -f "$WORK/summary.md" "$OUT/summary.md"
    [ -f "$WORK/env.txt" ] && cp -f "$WORK/env.txt" "$OUT/env.txt"
    for f in gla-bench.md train.md kernels-bench.md; do [ -f "$WORK/tables/$f" ] && cp -f "$WORK/tables/$f" "$OUT/$f"; done
    [ -f "$WORK/logs/gpu-tests.log" ] && cp -f "$WORK/logs/gpu-tests.log" "$OUT/gpu-tests.txt"
    tar -czf "$WORK/logs.tar.gz" -C "$WORK" run-info.txt stages.tsv logs tables 2>/dev/null \
        && mv -f "$WORK/logs.tar.gz" "$OUT/logs.tar.gz"
}

stage() {
    # stage NAME DEFAULT_BUDGET: run stage_NAME (a function below) under timeout, record its line.
    local name=$1 budget=$2 var left t0 rc secs status
    var="SPIKELM_GPU_BUDGET_$(echo "$name" | tr 'a-z-' 'A-Z_')"
    [ "$REHEARSAL" = 1 ] && budget=$((budget * 2))  # a shared 2-core CPU is slower than the GPU machine
    budget="${!var:-$budget}"
    left=$((DEADLINE - RESERVE_S - $(date +%s)))
    [ "$budget" -gt "$left" ] && budget=$left
    if [ "$budget" -lt "$MIN_STAGE_S" ]; then
        printf '%s\t0\t-\t%s\tskipped: deadline\n' "$name" "$budget" >> "$WORK/stages.tsv"
        echo "== $name: skipped (${budget}s left before the deadline)"
        return
    fi
    echo "== $name (budget ${budget}s, $(( $(date +%s) - START ))s since the start)"
    t0=$(date +%s.%N)
    timeout -k 5 "$budget" bash -c "source '$WORK/env.sh'; stage_${name//-/_}" > "$WORK/logs/$name.log" 2>&1 < /dev/null
    rc=$?
    secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
    case $rc in
        0) status=ok ;;
        99) status="skipped: $(tail -1 "$WORK/logs/$name.log")" ;;
        124|137) status="timed out" ;;
        *) status=failed ;;
    esac
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$secs" "$rc" "$budget" "$status" >> "$WORK/stages.tsv"
    echo "   $status (rc $rc, ${secs}s); log tail:"
    tail -4 "$WORK/logs/$name.log" | cut -c1-200 | sed 's/^/   | /'
    if declare -F "post_${name//-/_}" >/dev/null; then
        (source "$WORK/env.sh"; "post_${name//-/_}") >> "$WORK/logs/$name.log" 2>&1
    fi
    finalize
}

# ------------------------------------------------------------------------------------------
# stages (each runs in its own bash under timeout, after sourcing $WORK/env.sh)
# ------------------------------------------------------------------------------------------

stage_env() {
    {
        echo "# device facts ($MODE)"
        date -u '+date: %Y-%m-%d %H:%M:%S UTC'
        commit_line
        [ -f "$WHEELS/commit.txt" ] && { echo "benchmarks/wheels/commit.txt:"; sed 's/^/    /' "$WHEELS/commit.txt"; }
        echo "host: $(uname -srm); $(nproc) cores; $(free -g | awk '/^Mem/ {print $2 " GiB memory"}')"
        df -h /tmp /dev/shm 2>/dev/null
        echo; echo "## nvidia-smi"
        nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv 2>&1
        nvidia-smi 2>&1 | head -25
        echo; echo "## python"
        "$PY" - <<'PYEOF' 2>&1
import platform, sys
print("python", platform.python_version(), sys.executable)
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("gpu", p.name, f"{p.total_memory / 2**30:.0f} GiB", f"{p.multi_processor_count} SMs", f"sm_{p.major}{p.minor}")
try:
    import triton
    print("triton", triton.__version__)
except Exception as e:
    print("triton missing:", e)
PYEOF
        echo; echo "## packages before the carried wheels (pip list)"
        "$PY" -m pip list 2>/dev/null | grep -iE '^(torch|triton|accelerate|transformers|tokenizers|safetensors|huggingface|datasets|pyarrow|deepspeed|peft|pydantic|numpy|setuptools|pytest|tensorboard|regex|fsspec|typing.extensions|einops|cupy|flash|fla|spikingjelly) ' || true
        echo; echo "## carried wheels"
        ls "$WHEELS" 2>&1
    } > "$WORK/env.txt"
    cat "$WORK/env.txt"
}

install_editable() {
    # pip install -e . for the python $1, offline, with the carried setuptools (PYTHONPATH of that one command)
    local target_py=$1
    local err="$WORK/logs/editable-install.err" other=()
    [ "$target_py" = "$PY" ] || other=(--python "$target_py")  # pip >= 22.3
    if "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$WORK/build-site" \
            "$WHEELS"/build-only/setuptools-*.whl 2> "$err" \
        && PYTHONPATH="$WORK/build-site${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m pip "${other[@]}" install -q \
            --no-index --no-deps --no-build-isolation -e "$REPO" 2>> "$err"; then
        return 0
    fi
    cat "$err"  # (setuptools' warnings stay in the file when it works)
    return 1
}

make_farm() {
    # The fallback to an editable install: a folder $1/spikelm of links to spikelm/*, kernels and
    # recipes (the layout setuptools installs), used with PYTHONSAFEPATH=1 so that the
    # repository's own spikelm/ (without kernels/) does not shadow it.
    local farm=$1 f
    mkdir -p "$farm/spikelm"
    for f in "$REPO"/spikelm/*; do ln -sfn "$f" "$farm/spikelm/$(basename "$f")"; done
    ln -sfn "$REPO/kernels" "$farm/spikelm/kernels"
    ln -sfn "$REPO/recipes" "$farm/spikelm/recipes"
}

# shellcheck disable=SC2089,SC2090  # Python source, passed to python -c as one argument
IMPORT_CHECK='
import importlib, sys
import spikelm, spikelm.kernels, spikelm.recipes
print("spikelm", spikelm.__file__, "kernels", spikelm.kernels.__file__)
for name in ["torch", "triton", "transformers", "deepspeed", "datasets", "tokenizers", "jsonargparse", "peft",
             "pydantic", "accelerate", "fla", "spikingjelly"]:
    try:
        m = importlib.import_module(name)
        print(f"{name:14s}", getattr(m, "__version__", "?"), getattr(m, "__file__", ""))
    except Exception as e:
        print(f"{name:14s} IMPORT FAILED: {type(e).__name__}: {e}")
'

stage_setup() {
    local t t0
    t0=$(date +%s)
    if [ "$REHEARSAL" = 1 ]; then
        t=$(date +%s)
        echo "# 1. the device's install, for CPython 3.12 manylinux (as on the GPU machine; nothing here runs it)"
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site312" \
            --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            --platform any "$WHEELS"/*.whl || return 1
        echo "   installed $(find "$WORK/site312" -maxdepth 1 -name '*.dist-info' | wc -l) distributions in $(( $(date +%s) - t ))s"
        local py312
        for py312 in /root/.pyenv/versions/3.12*/bin/python3.12 "$(command -v python3.12)" ""; do
            [ -n "$py312" ] && "$py312" -c pass 2>/dev/null && break
        done
        if [ -n "$py312" ]; then
            echo "# 2. the torch-free carried packages import under $py312 (cp312 binaries: pydantic-core, regex)"
            PYTHONPATH="$WORK/site312" "$py312" -S -c 'import sys; sys.path.insert(0, sys.argv[1])
import pydantic, pydantic_core, regex, hjson, loguru, dill, multiprocess, fsspec, docstring_parser, typing_extensions
print("   ok: pydantic", pydantic.VERSION, "pydantic-core", pydantic_core.__version__, "regex", regex.__version__)' \
                "$WORK/site312" || return 1
        else
            echo "# 2. skipped: no python3.12 here"
        fi
        echo "# 3. the editable install (pip -e, offline), into a throwaway venv"
        "$PY" -m venv --without-pip "$WORK/venv" || return 1
        install_editable "$WORK/venv/bin/python" || return 1
        "$WORK/venv/bin/python" -c 'import glob, importlib, os, sys
site = [p for p in sys.path if p.endswith("site-packages")][0]
name = os.path.basename(glob.glob(os.path.join(site, "__editable__*spikelm*finder.py"))[0])[:-3]
m = importlib.import_module(name)
print("   editable mapping:", m.MAPPING)
assert m.MAPPING["spikelm.kernels"].endswith("kernels"), m.MAPPING' || return 1
        echo "# 4. the fallback (links + PYTHONSAFEPATH=1)"
        make_farm "$WORK/farm"
        PYTHONSAFEPATH=1 PYTHONPATH="$WORK/farm" "$PY" -c 'import spikelm.kernels, spikelm.recipes
print("   fallback imports spikelm.kernels from", spikelm.kernels.__file__)' || return 1
        echo "# 5. the carried packages this venv lacks (fla-core, spikingjelly, theirs), for the stages below"
        "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$WORK/site" \
            "$WHEELS"/fla_core-*.whl "$WHEELS"/spikingjelly-*.whl "$WHEELS"/loguru-*.whl "$WHEELS"/scienceplots-*.whl || return 1
        echo "export PYTHONPATH=\"$WORK/site\${PYTHONPATH:+:\$PYTHONPATH}\"" >> "$WORK/env.sh"
    else
        t=$(date +%s)
        echo "# 1. the carried wheels into $WORK/site (PYTHONPATH of every later stage)"
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" \
            "$WHEELS"/*.whl || return 1
        echo "export PYTHONPATH=\"$WORK/site\${PYTHONPATH:+:\$PYTHONPATH}\"" >> "$WORK/env.sh"
        export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
        echo "   done in $(( $(date +%s) - t ))s"
        echo "# 2. spikelm, editable (pip -e, offline), else the fallback (links + PYTHONSAFEPATH=1)"
        if install_editable "$PY" && (cd "$REPO" && "$PY" -c 'import spikelm.kernels, spikelm.recipes'); then
            echo "   editable install ok"
        else
            echo "   editable install failed: using the fallback"
            make_farm "$WORK/farm"
            echo "export PYTHONPATH=\"$WORK/farm:\$PYTHONPATH\" PYTHONSAFEPATH=1" >> "$WORK/env.sh"
        fi
    fi
    source "$WORK/env.sh"
    echo "# import check ($(( $(date +%s) - t0 ))s into setup)"
    "$PY" -c "$IMPORT_CHECK" > "$WORK/logs/imports.txt" 2>&1
    local rc=$?
    cat "$WORK/logs/imports.txt"
    [ "$rc" -eq 0 ] || return 1
    grep -q "IMPORT FAILED" "$WORK/logs/imports.txt" && echo "WARNING: a package failed to import (above)"
    echo "# the offline tokenizer ($(( $(date +%s) - t0 ))s into setup)"
    echo "  (a BPE of $VOCAB_BASE on tiny Shakespeare, padded to $VOCAB entries)"
    "$PY" "$REPO/benchmarks/gpu_budget.py" tokenizer "$TOK" --size "$VOCAB" --base "$VOCAB_BASE"
}

stage_gla() {
    # shellcheck disable=SC2086
    "$PY" -m spikelm.kernels.gla.bench $GLA_ARGS_STR --fla-max-configs "$FLA_MAX_CONFIGS" --out "$WORK/tables/gla-bench.md"
}

train() {
    # train NAME RECIPE [overrides...]: STEPS steps on tiny Shakespeare with the offline tokenizer
    local name=$1 recipe=$2
    shift 2
    [ -d "$TOK" ] || { echo "no tokenizer at $TOK (setup failed)"; return 1; }
    "$PY" -m spikelm.cli train "$recipe" \
        --data.train_files='[builtin:tinyshakespeare]' --data.tokenizer="$TOK" --data.val_fraction=0.1 \
        --train.max_steps="$STEPS" --train.run_dir="$RUNS/$name" --train.eval_every=0 --train.checkpoint_every=0 \
        --train.eval_max_batches=1 --train.sample_tokens=0 --train.log_every=5 "$@"
}

collect_run() {
    # keep the run's records in the logs (the tarball), free the disk, rebuild train.md
    local name=$1 d="$RUNS/$1" args=() n
    mkdir -p "$WORK/logs/$name"
    for f in metrics.jsonl recipe.json final/training_summary.json model_config.json; do
        [ -f "$d/$f" ] && cp -f "$d/$f" "$WORK/logs/$name/"
    done
    rm -rf "$d"
    for n in train-216m train-1b train-216m-compile train-1b-compile; do
        [ -f "$WORK/logs/$n/metrics.jsonl" ] || continue
        mkdir -p "$WORK/report/$n/final"
        cp -f "$WORK/logs/$n/metrics.jsonl" "$WORK/report/$n/"
        [ -f "$WORK/logs/$n/training_summary.json" ] && cp -f "$WORK/logs/$n/training_summary.json" "$WORK/report/$n/final/"
        args+=("$n=$WORK/report/$n")
    done
    [ ${#args[@]} -gt 0 ] && "$PY" "$REPO/benchmarks/gpu_budget.py" train-report "$WORK/tables/train.md" "${args[@]}" \
        --window-start "$WINDOW_START" --target 0.35
}

stage_train_216m() { train train-216m "$RECIPE_216M"; }
stage_train_1b() { train train-1b "$RECIPE_1B" --train.grad_accum=1; }
stage_train_216m_compile() { train train-216m-compile "$RECIPE_216M" --train.compile=true; }
stage_train_1b_compile() { train train-1b-compile "$RECIPE_1B" --train.grad_accum=1 --train.compile=true; }
post_train_216m() { collect_run train-216m; }
post_train_1b() { collect_run train-1b; }
post_train_216m_compile() { collect_run train-216m-compile; }
post_train_1b_compile() { collect_run train-1b-compile; }

stage_kernels() {
    # shellcheck disable=SC2086
    "$PY" -m spikelm.kernels.bench $KERNEL_ARGS_STR --out "$WORK/tables/kernels-bench.md"
}

stage_step() {
    if [ ! -f "$REPO/spikelm/bench/step.py" ]; then
        echo "no spikelm/bench/step.py in this tree"
        return 99
    fi
    [ -d "$TOK" ] || { echo "no tokenizer at $TOK (setup failed)"; return 1; }
    # the recipe's data and tokenizer come from the hub: the same offline overrides as the training runs
    # shellcheck disable=SC2086
    "$PY" -m spikelm.bench.step "$STEP_RECIPE" --steps "$STEP_STEPS" --warmup "$STEP_WARMUP" \
        --set 'data.train_files=[builtin:tinyshakespeare]' --set "data.tokenizer=$TOK" --set data.val_fraction=0.1 \
        --run-dir "$RUNS/step" --out "$WORK/tables/step-profile.md" ${SPIKELM_GPU_STEP_ARGS:-}
}
post_step() { rm -rf "$RUNS/step"; }

stage_gpu_tests() {
    local xdist=()
    "$PY" -c 'import xdist' 2>/dev/null && [ "$REHEARSAL" != 1 ] && xdist=(-n 8)
    "$PY" -m pytest -m gpu -p no:cacheprovider -v -rfE "${xdist[@]}" tests
}
post_gpu_tests() {
    { echo "# pytest -m gpu"; echo; echo "- $(grep -E '(passed|failed|skipped|error|no tests ran)' "$WORK/logs/gpu-tests.log" | tail -1 | tr -d '=' | sed 's/^ *//; s/ *$//')"; } \
        > "$WORK/tables/gpu-tests.md"
}

export -f commit_line install_editable make_farm train collect_run
export -f stage_env stage_setup stage_gla stage_train_216m stage_train_1b stage_train_216m_compile \
    stage_train_1b_compile stage_kernels stage_step stage_gpu_tests
# shellcheck disable=SC2090
export IMPORT_CHECK MODE

# ------------------------------------------------------------------------------------------
# the run: stage name, budget in seconds (a cap: the deadline cuts the later ones)
# ------------------------------------------------------------------------------------------
declare -A BUDGET=(
    [env]=15 [setup]=60 [gla]=90
    [train-216m]=70 [train-1b]=80 [train-216m-compile]=90 [train-1b-compile]=100
    [kernels]=60 [gpu-tests]=60 [step]=45
)
ORDER="${SPIKELM_GPU_STAGES:-env setup gla train-216m train-1b train-216m-compile train-1b-compile kernels gpu-tests step}"
echo "gpu.sh: $MODE; work $WORK; out $OUT; python $PY; deadline $((DEADLINE - START)) s"
for s in $ORDER; do
    if [ -z "${BUDGET[$s]:-}" ]; then
        echo "unknown stage $s (known: ${!BUDGET[*]})"
        continue
    fi
    stage "$s" "${BUDGET[$s]}"
done
echo "finished: $(( $(date +%s) - START )) s after the start" >> "$WORK/run-info.txt"
finalize
rm -rf "$RUNS"
echo
cat "$OUT/summary.md"
echo
echo "files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
