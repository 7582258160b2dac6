#!/usr/bin/env bash
# Issue 33's GPU checks in one run, for the device tool's H200 (its image holds CUDA JAX,
# PyTorch, flax, optax and timm; se-flax runs from the checkout, no install): the test suite on
# the GPU, then the benchmark at batches that fill it, into $OUT/gpu (the device tool brings
# $OUT back; copy it to benchmarks/results/gpu/ and commit). Planned to finish in 8 minutes:
# each phase has its own time limit, and a phase cut short still leaves its log.
#
#   scripts/gpu.sh          on the GPU machine (device tool: run "scripts/gpu.sh", timeout 600)
#   scripts/gpu.sh --cpu    the same steps shortened, on this machine's CPU (.venv): a check of
#                           the script itself, no GPU numbers
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp/se-flax-gpu}/gpu"
mkdir -p "$out"
log() { echo "gpu.sh: $*" | tee -a "$out/steps.log" >&2; }

if [ "${1:-}" = "--cpu" ]; then
    PY=.venv/bin/python
    export JAX_PLATFORMS=cpu
    tests=(tests/test_fused_se.py tests/test_squeeze_excite.py)
    bench=(--quick --workloads se_fwd,se_fwdbwd --modes jit,eager --dtypes float32)
    test_limit=300 bench_limit=180 workers=2
else
    PY=python3
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    export XLA_PYTHON_CLIENT_PREALLOCATE=false  # several test workers share the one GPU
    tests=(tests)
    # The first run: the SE blocks and SE-ResNet-50 next to ResNet-50 (the issue's goals); a
    # second run names the other families, e.g. GPU_MODELS=seresnext26d_32x4d,efficientnet_b0,
    # mobilenetv3_large_100,regnety_016 (torch.compile takes about a minute per network).
    bench=(--workloads se_fwd,se_fwdbwd,infer,train --se-batch 64 --model-batch 64
           --models "${GPU_MODELS:-resnet50,seresnet50}"
           --dtypes float32,bfloat16 --modes jit,nnx_jit,eager,channels_last,compile)
    test_limit=230 bench_limit=230 workers=8
fi

log "machine: $($PY - <<'EOF'
import jax, torch
print(jax.__version__, jax.devices(), "torch", torch.__version__,
      torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA")
EOF
)"
log "phase 1: tests (${tests[*]}), at most ${test_limit} s"
timeout "$test_limit" "$PY" -m pytest -q -p no:cacheprovider -n "$workers" --dist worksteal \
    --durations=20 "${tests[@]}" >"$out/tests.log" 2>&1
log "tests exit $? (124: cut at the limit); $(grep -E '[0-9]+ (passed|failed)' "$out/tests.log" | tail -1)"
log "phase 2: benchmark (${bench[*]}), at most ${bench_limit} s"
timeout "$bench_limit" "$PY" -m benchmarks "${bench[@]}" --no-progress --out "$out/bench" \
    >"$out/bench.log" 2>&1
log "benchmark exit $? (124: cut at the limit); results in $out/bench"
