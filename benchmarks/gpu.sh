#!/usr/bin/env bash
# One prepared GPU session (< 10 minutes on one H100/H200): parity in float32, the grouped-conv
# microbenchmark, and the full train step JAX vs PyTorch for the three architectures at 224 and 320 px.
#
#   bash benchmarks/gpu.sh            # on the GPU machine (results in $OUT or benchmarks/out/)
#   bash benchmarks/gpu.sh --tiny     # the same steps at toy sizes, on CPU, to know the script works
#
# Steps run in priority order, each under its own time limit, so a slow compile costs one figure,
# not the session. Every JSON line goes to gpu.jsonl; the human lines to gpu.log.
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
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-/tmp/jax_cache}"
# The XLA flags of real training runs (train/xla_flags.py says why each is set).
export XLA_FLAGS="$("$PY" -c 'import os, sys; sys.path.insert(0, "."); from train.xla_flags import with_train_flags; print(with_train_flags(os.environ.get("XLA_FLAGS")))')"

step() {  # step LIMIT_S NAME CMD...
  local limit=$1 name=$2
  shift 2
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
  RES_A=32; RES_B=48; BATCH=1; STEPS=1; CONV="--batch 2 --size 14 --channels 64 --groups 8 --steps 1"
  PARITY=(-k "resnet18 or resnext50"); LIMIT=600
  RX=resnext50_32x4d; R50=resnet18; EXTRA="--conv-impl native"
else
  RES_A=224; RES_B=320; BATCH=32; STEPS=10; CONV="--batch 96 --size 80 --channels 256 --groups 32 --steps 20"
  PARITY=(-k parity); LIMIT=240
  RX=resnext101_32x8d; R50=resnet50; EXTRA=""
fi
TT="benchmarks/train_throughput.py --batch $BATCH --steps $STEPS --block 5 $EXTRA"

# 1. The port on this device, float32 at full matmul/conv precision (the default would be TF32).
step "$LIMIT" parity-f32 env JAX_DEFAULT_MATMUL_PRECISION=highest "$PY" -m pytest -q -x tests/model "${PARITY[@]}"
# 2. The target that matters: ResNeXt-101 32x8d, 320 px, bf16, JAX vs PyTorch eager (channels_last, autocast).
step "$LIMIT" rx101-320-bf16 "$PY" $TT --arch $RX --resolution $RES_B --precision bf16 --baseline torch
# 3. One grouped conv, both lowerings vs torch, bf16 and f32.
step 120 grouped-conv-bf16 "$PY" benchmarks/grouped_conv.py $CONV --precision bf16
step 120 grouped-conv-f32 "$PY" benchmarks/grouped_conv.py $CONV --precision f32
# 4. Against torch.compile.
step "$LIMIT" rx101-320-bf16-compile "$PY" $TT --arch $RX --resolution $RES_B --precision bf16 --baseline torch-compile
# 5. The other two architectures, and 224 px.
for arch in $R50 efficientnet_b0; do
  for res in $RES_A $RES_B; do
    step "$LIMIT" "$arch-$res-bf16" "$PY" $TT --arch $arch --resolution $res --precision bf16 --baseline torch
  done
done
step "$LIMIT" rx101-224-bf16 "$PY" $TT --arch $RX --resolution $RES_A --precision bf16 --baseline torch
# 6. What remat buys on this device: compiled temporary memory and FLOPs with and without (compile only).
if [[ $TINY == 1 ]]; then RM="--arch resnet18 --resolution 32 --batch 1"; else RM="--arch $RX --resolution $RES_B --batch $BATCH"; fi
step "$LIMIT" remat-memory "$PY" benchmarks/remat_memory.py $RM --precision bf16
echo "results: $JSONL ($(wc -l <"$JSONL") lines), log: $LOG; steps failed: $FAILED"
exit $((FAILED > 0))
