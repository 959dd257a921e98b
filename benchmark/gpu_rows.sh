#!/usr/bin/env bash
# WHEELS=/path/to/wheels OUT=results/gpu-rows bash benchmark/gpu_rows.sh
#
# Issue #18's device rows in one go (about 7 minutes on one H100; every stage has its own time limit and a failed
# stage does not stop the others), each table written to $OUT and printed at the end:
#   1. architecture latency of ipnet, instantid (1024 px), ipcontrol (512 px) and, when registered, ipcontrol-xl
#      (1024 px) in ONE run (so the ratios hold), every method plain and with --offload model: latency.md, vram.md
#      (peak GB plain / offloaded, the smallest card that fits, the offload's latency cost);
#   2. the harness overhead run of BENCHMARKS.md section 2 (--limit 200): overhead/summary.md;
#   3. training step costs at micro-batch 1/4/8 (train.step_cost, 512 px, bf16, SD1.5 architecture): step_cost.md.
# The device has torch, transformers and accelerate but not diffusers: WHEELS names a folder of wheels (diffusers
# and whatever else is missing) installed with pip --no-index. DEVICE=cpu ARCH=tiny is the CPU smoke mode (tiny
# networks, 64 px, one timed edit; tests/test_gpu_rows.py runs it without the pip step).
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
ARCH=${ARCH:-sd15}
OUT=${OUT:-results/gpu-rows}
PY=${PYTHON:-python}
mkdir -p "$OUT"
LOG="$OUT/gpu_rows.log"
: > "$LOG"

if [ -n "${WHEELS:-}" ]; then
    "$PY" -m pip install --quiet --no-index --find-links "$WHEELS" "$WHEELS"/*.whl 2>&1 | tail -3 | tee -a "$LOG"
fi

if [ "$ARCH" = tiny ]; then  # CPU smoke: test-size networks, one edit, one step
    RES=64; BIG=64; WARMUP=0; REPEATS=1; DTYPE=float32; TRAIN_DTYPE=fp32; MICRO=1; STEPS=1; LIMIT=2; OVER_WARMUP=0
    IMAGES=synthetic:2:64; RANDOM_ARCH=(--random-arch tiny --steps 1)
    TRAIN_EXTRA=(--warmup 0 --set ipnet.teacher_steps=1)
    TRAIN_RES=32; T_LAT=300; T_OVER=120; T_STEP=300
else
    RES=512; BIG=1024; WARMUP=${WARMUP:-2}; REPEATS=${REPEATS:-5}; DTYPE=float16; TRAIN_DTYPE=bf16; MICRO=1,4,8
    STEPS=3; LIMIT=200; OVER_WARMUP=3; IMAGES=synthetic:64; RANDOM_ARCH=(); TRAIN_EXTRA=(); TRAIN_RES=512
    T_LAT=${T_LAT:-270}; T_OVER=${T_OVER:-75}; T_STEP=${T_STEP:-180}
fi

METHODS=ipnet,instantid,ipcontrol
RESOLUTIONS=(--resolution "$RES" --resolution "instantid=$BIG")
if "$PY" -c "import sys; from instantportrait.methods import list_methods; sys.exit('ipcontrol-xl' not in list_methods())"
then
    METHODS=$METHODS,ipcontrol-xl
    RESOLUTIONS+=(--resolution "ipcontrol-xl=$BIG")
fi
echo "methods: $METHODS on $DEVICE ($ARCH)" | tee -a "$LOG"

stage() {  # stage NAME SECONDS COMMAND...: run with a time limit, log, never stop the script
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" >> "$LOG" 2>&1
    local rc=$?
    echo "[$name] exit $rc after $((SECONDS - t0)) s" | tee -a "$LOG"
}

stage latency "$T_LAT" "$PY" -m benchmark --latency-only --random-weights "${RANDOM_ARCH[@]}" --device "$DEVICE" \
    --dtype "$DTYPE" --methods "$METHODS" "${RESOLUTIONS[@]}" --offload none,model --warmup "$WARMUP" \
    --repeats "$REPEATS" --quiet --out "$OUT/latency"
stage overhead "$T_OVER" "$PY" -m benchmark --random-weights "${RANDOM_ARCH[@]}" --methods ipnet --images "$IMAGES" \
    --device "$DEVICE" --resolution "$RES" --score-later --face-pack none --clip none --warmup "$OVER_WARMUP" --limit "$LIMIT" \
    --quiet --out "$OUT/overhead"
stage step_cost "$T_STEP" "$PY" -m train.step_cost --device "$DEVICE" --dtype "$TRAIN_DTYPE" --micro-batch "$MICRO" \
    --resolution "$TRAIN_RES" --arch "$ARCH" --steps "$STEPS" "${TRAIN_EXTRA[@]}" --out "$OUT/step_cost"

for table in latency/latency.md latency/vram.md overhead/summary.md step_cost/step_cost.md; do
    echo; echo "==== $OUT/$table"
    cat "$OUT/$table" 2>/dev/null || echo "(not written: see $LOG)"
done
