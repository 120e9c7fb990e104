#!/usr/bin/env bash
# One prepared GPU session (about 8 minutes of work on one H100/H200, within the session's 15 minutes with
# the machine's start): the headline first, then what explains it, then the rest.
#   1. ResNeXt-101 32x8d, 320 px, bf16 train step: JAX vs PyTorch eager, then vs torch.compile (img/s, MFU);
#   2. its grouped 3x3 convs layer by layer: forward, input gradient, weight gradient, JAX vs PyTorch;
#   3. the port's float32 parity on the device; 4. the other architectures and 224 px; 5. remat memory.
#
#   bash benchmarks/gpu.sh            # on the GPU machine (results in $OUT or benchmarks/out/)
#   bash benchmarks/gpu.sh --tiny     # the same steps at toy sizes, on CPU, to know the script works
#   ONLY_SEARCH=1 BUDGET_S=420 bash benchmarks/gpu.sh   # step 7 alone: search latency at 10^6 images
#
# Each step runs under its own time limit and all of them under BUDGET_S (default 480 s): a step that
# cannot start with 30 s left is skipped and said so, so a slow compile costs one figure, never the
# session. Every JSON line goes to gpu.jsonl as it is measured; the human lines to gpu.log.
set -uo pipefail
cd "$(dirname "$0")/.."
TINY=0
[[ "${1:-}" == "--tiny" ]] && TINY=1
OUTDIR="${OUT:-benchmarks/out}"
mkdir -p "$OUTDIR"
JSONL="$OUTDIR/gpu.jsonl"
LOG="$OUTDIR/gpu.log"
: >"$JSONL"
: >"$LOG"
# The project's .venv when there is one (here), else the machine's python3 (the GPU image has jax, torch...).
if [[ -z "${PYTHON:-}" && -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY="${PYTHON:-python3}"; fi
FAILED=0
BUDGET_S="${BUDGET_S:-480}"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
# JAX and torch share one GPU in the comparison steps: JAX must not take 75% of it up front.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-/tmp/jax_cache}"
# The XLA flags of real training runs (train/xla_flags.py says why each is set).
export XLA_FLAGS="$("$PY" -c 'import os, sys; sys.path.insert(0, "."); from train.xla_flags import with_train_flags; print(with_train_flags(os.environ.get("XLA_FLAGS")))')"

step() {  # step LIMIT_S NAME CMD...  (the limit shrinks to what is left of BUDGET_S)
  local limit=$1 name=$2
  shift 2
  if [[ "${ONLY_SCALE:-0}" == 1 && $name != scale-* ]]; then
    echo "-- $name: skipped (ONLY_SCALE=1)" | tee -a "$LOG"
    return
  fi
  if [[ "${ONLY_SEARCH:-0}" == 1 && $name != search-* ]]; then
    echo "-- $name: skipped (ONLY_SEARCH=1)" | tee -a "$LOG"
    return
  fi
  local left=$((BUDGET_S - SECONDS))
  if ((left < 30)); then
    echo "-- $name: skipped, ${left} s left of BUDGET_S=$BUDGET_S" | tee -a "$LOG"
    return
  fi
  ((limit > left)) && limit=$left
  echo "== $name" | tee -a "$LOG"
  local t0=$SECONDS
  timeout "$limit" "$@" 2>>"$LOG" | tee -a "$JSONL"
  local rc=${PIPESTATUS[0]}
  echo "-- $name: rc=$rc, $((SECONDS - t0)) s" | tee -a "$LOG"
  [[ $rc == 0 ]] || FAILED=$((FAILED + 1))
}

{ date -u; "$PY" -c "import jax, flax, torch; print('jax', jax.__version__, 'flax', flax.__version__, 'torch', torch.__version__, jax.devices())"; } | tee -a "$LOG"
command -v nvidia-smi >/dev/null && nvidia-smi -L | tee -a "$LOG"

if [[ $TINY == 1 ]]; then
  # Toy sizes and smaller stand-ins (XLA:CPU takes minutes to compile ResNeXt-101's split convs):
  # this mode only proves that every step of the script runs and prints its JSON.
  RES_A=32; RES_B=48; BATCH=1; STEPS=1
  LAYERS="--resolution 32 --images 2 --width-scale 0.125 --steps 1"
  PARITY=(-k "resnet18 or resnext50"); LIMIT=600
  RX=resnext50_32x4d; R50=resnet18; EXTRA="--conv-impl native"
else
  RES_A=224; RES_B=320; BATCH=32; STEPS=10
  LAYERS="--resolution 320 --images 96 --steps 10"
  PARITY=(-k "parity and (resnext101 or resnet50 or efficientnet_b0)"); LIMIT=150
  RX=resnext101_32x8d; R50=resnet50; EXTRA=""
fi
TT="benchmarks/train_throughput.py --batch $BATCH --steps $STEPS --block 5 $EXTRA"

# 1. The headline: ResNeXt-101 32x8d, 320 px, bf16, JAX vs PyTorch eager (channels_last, autocast), then
#    vs torch.compile (the second process reuses JAX's compiled step from the persistent cache).
step "$LIMIT" rx101-320-bf16 "$PY" $TT --arch $RX --resolution $RES_B --precision bf16 --baseline torch
step "$LIMIT" rx101-320-bf16-compile "$PY" $TT --arch $RX --resolution $RES_B --precision bf16 --baseline torch-compile
# 2. Where it is won or lost: every grouped conv of that network, fwd / input grad / weight grad, vs torch.
step 90 grouped-conv-layers-bf16 "$PY" benchmarks/grouped_conv_layers.py $LAYERS --precision bf16
# 3. The port on this device, float32 at full matmul/conv precision (the default would be TF32).
step "$LIMIT" parity-f32 env JAX_DEFAULT_MATMUL_PRECISION=highest "$PY" -m pytest -q -x tests/model "${PARITY[@]}"
# 4. The other two architectures, and 224 px.
for arch in $R50 efficientnet_b0; do
  step "$LIMIT" "$arch-$RES_B-bf16" "$PY" $TT --arch $arch --resolution $RES_B --precision bf16 --baseline torch
done
step "$LIMIT" rx101-224-bf16 "$PY" $TT --arch $RX --resolution $RES_A --precision bf16 --baseline torch
for arch in $R50 efficientnet_b0; do
  step "$LIMIT" "$arch-$RES_A-bf16" "$PY" $TT --arch $arch --resolution $RES_A --precision bf16 --baseline torch
done
# 5. What remat buys on this device: compiled temporary memory and FLOPs with and without (compile only).
if [[ $TINY == 1 ]]; then RM="--arch resnet18 --resolution 32 --batch 1"; else RM="--arch $RX --resolution $RES_B --batch $BATCH"; fi
step "$LIMIT" remat-memory "$PY" benchmarks/remat_memory.py $RM --precision bf16
# 5b. Embedding (issue 13): our inference forward (`model embed`'s) vs torchvision eager and torch.compile,
#    channels_last, the same uint8 batches at the same resolution and batch, as a ratio.
if [[ $TINY == 1 ]]; then EM=(--arch resnet18 --resolution 32 --batch-size 2 --batches 2 --no-compile); else EM=(--arch $RX --resolution $RES_B --batch-size 64 --batches 10 --dtype bfloat16); fi
step "$LIMIT" embed-throughput "$PY" benchmarks/embed_throughput.py "${EM[@]}"
# 6. Archive scale (issue 13): 1,000,000 x 2048 archive-like signatures, each stage timed with its peak memory
#    (kNN graph, OPTICS, HDBSCAN, mining, retrieval, then the whole `cluster optics` command on an 8 GB file).
#    It needs ~10 minutes of its own: after steps 1-5 it runs only with BUDGET_S raised (e.g. BUDGET_S=1100),
#    or alone: ONLY_SCALE=1 bash benchmarks/gpu.sh. Each stage prints its JSON line when done.
if [[ $TINY == 1 ]]; then SC=(--n 2000 --dim 64); else SC=(--n 1000000 --dim 2048 --memory-budget-mb 60000); fi
step 600 scale-1m "$PY" benchmarks/scale.py "${SC[@]}" --stages knn,optics,hdbscan,mining,retrieval,command
# 7. Search (issue 15): exact top-k query latency over 1,000,000 images x 14 vectors x 512 (a 14 GB float16
#    index of synthetic unit vectors, written first, deleted after), streaming and resident, batch 1 and 32.
#    Needs jax and numpy only. Like step 6 it runs only with BUDGET_S raised, or alone: ONLY_SEARCH=1.
if [[ $TINY == 1 ]]; then SE=(--sizes 2000 --reps 2); else SE=(--sizes 1000000 --reps 5 --max-index-gb 20); fi
step 420 search-1m "$PY" benchmarks/search.py --part latency --dims 512 "${SE[@]}"
echo "results: $JSONL ($(wc -l <"$JSONL") lines), log: $LOG; steps failed: $FAILED"
exit $((FAILED > 0))
