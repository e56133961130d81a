#!/usr/bin/env bash
# om3db device check: everything om3db wants a GPU for, measured in one go (< 8 minutes on one H100 / H200).
#
#   bash benchmarks/device_check.sh [--out DIR] [--dry-run]
#
# 1. installs what is missing from the package registries (faiss-gpu-cu12, else faiss-cpu; the pipeline's
#    packages), each try bounded by a timeout; what happened goes into the report ("install");
# 2. FAISS at 1M clustered 1152-d vectors: GPU flat and IVF build / add rate, single and batch-32 search
#    p50 / p99, recall@10 against exact CPU search;
# 3. SigLIP-SO400M, DINOv2-L and SAM ViT-H (random weights, real architectures) in bfloat16: items/s and
#    achieved TFLOP/s against the matmul peak of the dtype measured in the same run;
# 4. one ScanNet-size synthetic scan through the ingest pipeline in bfloat16: seconds per stage and crops/s
#    (the model stages alone on synthetic frames if the pipeline's packages cannot be installed).
#
# Writes DIR/report.json and DIR/report.md (DIR: --out, else $OUT, else ./device-check-out).
# --dry-run: no GPU and no installs; the same steps at toy size on the CPU, the same report keys, ~30 s
# (tests/test_device_check.py runs it on every push).
set -uo pipefail

DRY=0
OUTDIR="${OUT:-}"
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --out) OUTDIR="$2"; shift ;;
        --out=*) OUTDIR="${1#--out=}" ;;
        -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "device_check.sh: unknown argument $1 (use --out DIR, --dry-run)" >&2; exit 2 ;;
    esac
    shift
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
OUTDIR="${OUTDIR:-$ROOT/device-check-out}"
mkdir -p "$OUTDIR"
OUTDIR="$(cd "$OUTDIR" && pwd)"
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON="$(command -v python3 || command -v python)"; fi
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # om3db from this checkout, installed or not
export HF_HUB_OFFLINE=1                               # random weights only: nothing is downloaded
export TOKENIZERS_PARALLELISM=false
# Allocator settings the model benchmarks use (benchmarks/_modelbench.py, ALLOC_ENV)
export THP_MEM_ALLOC_ENABLE=1 MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=4294967296 OM3DB_BENCH_ALLOC_ENV=1

INSTALL_LOG="$OUTDIR/install.json"
has() { "$PYTHON" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$1') is None)" 2>/dev/null; }
pip_try() {  # pip_try SECONDS PACKAGE...: one bounded attempt, no retries
    timeout "$1" "$PYTHON" -m pip install --quiet --no-input --disable-pip-version-check --retries 0 --timeout 15 "${@:2}" >>"$OUTDIR/install.log" 2>&1
}
declare -A STATE
if [ "$DRY" = 1 ]; then
    STATE[all]="skipped (dry run)"
else
    if has faiss; then STATE[faiss]="present"
    elif pip_try 120 faiss-gpu-cu12; then STATE[faiss]="installed faiss-gpu-cu12"
    elif pip_try 60 faiss-cpu; then STATE[faiss]="installed faiss-cpu (faiss-gpu-cu12 failed, see install.log)"
    else STATE[faiss]="failed (see install.log)"; fi
    for spec in open3d-cpu:open3d sqlalchemy:sqlalchemy alembic:alembic scikit-learn:sklearn scipy:scipy \
                safetensors:safetensors pillow:PIL segment-anything:segment_anything; do
        pkg="${spec%%:*}"; mod="${spec##*:}"
        if has "$mod"; then STATE[$mod]="present"
        elif pip_try 60 "$pkg"; then STATE[$mod]="installed $pkg"
        else STATE[$mod]="failed (see install.log)"; fi
    done
fi
{
    printf '{'
    sep=""
    for k in "${!STATE[@]}"; do printf '%s"%s": "%s"' "$sep" "$k" "${STATE[$k]}"; sep=", "; done
    printf '}\n'
} >"$INSTALL_LOG"

ARGS=(--out "$OUTDIR" --install-log "$INSTALL_LOG")
LIMIT=420
if [ "$DRY" = 1 ]; then ARGS+=(--dry-run); LIMIT=120; fi
timeout "$LIMIT" "$PYTHON" benchmarks/device_check.py "${ARGS[@]}"
rc=$?
if [ $rc -ne 0 ]; then
    echo "device_check.sh: benchmarks/device_check.py exited $rc (124 = over ${LIMIT} s)" >&2
    exit $rc
fi
echo "device_check.sh: $OUTDIR/report.json, $OUTDIR/report.md"
