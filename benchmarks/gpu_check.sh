#!/bin/bash
# The GPU checks of BENCHMARKS.md ("GPU") in one go, for a single H100/H200:
#   1. the attention tests on the GPU (cuDNN packed and dense against the float32 reference),
#   2. the ~1B Llama training step: transformers + torch, then lmlib's variants.
# Each part has its own time limit, so one failure leaves the others' numbers. Results go to
# $OUT (default /tmp/gpu_check): one JSON per benchmark, and the logs.
#
#   benchmarks/gpu_check.sh [variant ...]   (from the repository root; default: see the end)
# Needs python3 with jax[cuda], flax, optax, orbax-checkpoint, torch and transformers.
set -u
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
BATCH=${BATCH:-8} MODEL=${MODEL:-llama_1b}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
python3 - <<'PYTHON'
import jax, flax, optax, torch, transformers
print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__,
      'torch', torch.__version__, 'transformers', transformers.__version__, jax.devices())
PYTHON

bench() {  # bench NAME [XLA_FLAGS] -- benchmark.py arguments
    local name=$1 flags=$2
    shift 2
    echo "== $name ${flags:+(XLA_FLAGS=$flags)}"
    local args=(--model="$MODEL" --batch_size="$BATCH" --loss_chunk_len=512
                --json="$OUT/$name.json" "$@")
    local log=$OUT/$name.log
    XLA_FLAGS=$flags timeout 170 python3 benchmarks/benchmark.py "${args[@]}" > "$log" 2>&1
    echo "   exit $? | $(grep -E '^ *(lmlib|torch):|Error|error' "$log" | tail -2)"
}

run_variant() {
    local args
    case $1 in
    tests) echo "== attention tests"
        args=(-q -p no:cacheprovider --noconftest tests/models/test_attention_and_remat.py)
        timeout 150 python3 -m pytest "${args[@]}" > "$OUT/tests.log" 2>&1
        echo "   exit $? | $(tail -1 "$OUT/tests.log")" ;;
    torch) bench torch "" --framework=torch ;;
    cudnn) bench cudnn "" --framework=lmlib --remat=none ;;
    cudnn_minimal) bench cudnn_minimal "" --framework=lmlib --remat=minimal ;;
    cudnn_full) bench cudnn_full "" --framework=lmlib --remat=full ;;
    unroll) bench unroll "" --framework=lmlib --remat=none --unroll ;;
    unroll_minimal) bench unroll_minimal "" --framework=lmlib --remat=minimal --unroll ;;
    cudnn_b16) bench cudnn_b16 "" --framework=lmlib --remat=none --batch_size=16 ;;
    torch_b16) bench torch_b16 "" --framework=torch --batch_size=16 ;;
    profile) echo "== profile (benchmarks/profile_step.py, unrolled, remat none; trace in \$OUT)"
        args=(--model="$MODEL" --batch_size="$BATCH" --loss_chunk_len=512 --remat=none --unroll
              --trace=/tmp/trace)
        timeout 200 python3 benchmarks/profile_step.py "${args[@]}" > "$OUT/profile.log" 2>&1
        echo "   exit $?"; grep -E "ms" "$OUT/profile.log"
        # The trace file alone, at the top of $OUT (the profiler nests it four folders down).
        find /tmp/trace -name "*.xplane.pb" -exec cp {} "$OUT/step.xplane.pb" \; ;;
    xla) bench xla "" --framework=lmlib --remat=none --attention=xla ;;
    generate) echo "== decoding (benchmarks/benchmark_generate.py, the demo Llama, float32)"
        args=(--batch_sizes=1,32 --new_tokens=64)
        timeout 170 python3 benchmarks/benchmark_generate.py "${args[@]}" > "$OUT/generate.log" 2>&1
        echo "   exit $?"; grep -E "^batch" "$OUT/generate.log" ;;
    no_triton_gemm) args=(--framework=lmlib --remat=none)
        bench no_triton_gemm "--xla_gpu_enable_triton_gemm=false" "${args[@]}" ;;
    *) echo "unknown variant $1"; return 1 ;;
    esac
}

for variant in "${@:-tests unroll unroll_minimal cudnn_minimal torch profile}"; do
    for v in $variant; do run_variant "$v"; done
done
