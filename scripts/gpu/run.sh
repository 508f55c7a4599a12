#!/usr/bin/env bash
# The GPU measurements of docs/benchmarks.md, one step per call of the device tool (a GPU
# machine with torch, onnx and no network; see docs/benchmarks.md).
#
# Carried into each call (git-ignored folders of the repo root):
#   .carry_py/    pure-Python packages the machine lacks: sam2 (Meta), hydra, omegaconf,
#                 antlr4, iopath (copied from a Python 3.11 venv; they run on 3.12)
#   .carry1..5/   the onnxruntime-gpu 1.31.1 wheel (CUDA 13), split in 52 MiB parts
#   .carry_pt/    nvidia-pytriton 0.7.0 (tritonserver) and tritonclient with its cp312 deps
#
#   bash scripts/gpu/run.sh start            # call 1, carry .carry_py .carry1
#   bash scripts/gpu/run.sh part 2           # calls 2..5, carry .carryN
#   bash scripts/gpu/run.sh install          # sha256, pip install --target, ceilings
#   bash scripts/gpu/run.sh bench SIZE [benchmark.py flags...]
#   bash scripts/gpu/run.sh before SIZE      # the unoptimised graphs of SIZE
#   bash scripts/gpu/run.sh pytriton         # carry .carry_pt: pip install --target
#   bash scripts/gpu/run.sh triton SIZE PRECISION [benchmark.py flags...]
#                                            # serve_local.py (GPU configs) + benchmark
set -euo pipefail
W=/tmp/gpu
WHEEL=onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl
SHA256=05d548956197b9d01f59b625de740e0d6be3593f874e241a12dc0362650ecdf7
export PYTHONUNBUFFERED=1
step=${1:?step}
shift

status() {
    ls -la "$W" | grep -E "part|whl|done" || true
    for f in "$W"/export_*.log; do [ -f "$f" ] && { echo "== $f"; grep -E '^\$|\(|wrote|Error|error' "$f" | tail -4; }; done
    return 0
}

case "$step" in
start)
    mkdir -p "$W"
    nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,clocks.sm,clocks.max.sm,temperature.gpu --format=csv
    python3 -c 'import sys, torch, onnx, onnxruntime as o; print(sys.version.split()[0], torch.__version__, torch.version.cuda, onnx.__version__, o.__version__)'
    rm -rf "$W/py" && cp -r .carry_py "$W/py"
    cat .carry1/part >"$W/$WHEEL.part"
    bash "$0" exports "$@"
    ;;
exports)
    # Exports take minutes of CPU: they run on while the next calls bring the wheel.
    rm -rf "$W/code" "$W"/*.done && mkdir -p "$W/code" && cp -r src scripts "$W/code/"
    PYTHONPATH="$W/py" setsid nohup python3 "$W/code/scripts/gpu/export_all.py" --out "$W" \
        --sizes "${1:-tiny,base_plus,large}" --before "${2:-tiny,base_plus}" >"$W/export.log" 2>&1 </dev/null &
    sleep 5
    status
    ;;
part)
    cat ".carry$1/part" >>"$W/$WHEEL.part"
    [ -z "${2:-}" ] || bash "$0" exports
    status
    ;;
install)
    echo "$SHA256  $W/$WHEEL.part" | sha256sum -c -
    mv "$W/$WHEEL.part" "$W/$WHEEL"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$W/$WHEEL"
    PYTHONPATH=/tmp/site python3 - <<'EOF'
import time, torch, onnxruntime as ort
print("onnxruntime", ort.__version__, ort.get_available_providers())
# The two ceilings of METHOD.md: device-to-device copy and an FP16 matrix product.
x = torch.randn(2**28, device="cuda", dtype=torch.float16); y = torch.empty_like(x)
for _ in range(3): y.copy_(x)
torch.cuda.synchronize(); t = time.perf_counter()
for _ in range(20): y.copy_(x)
torch.cuda.synchronize(); dt = (time.perf_counter() - t) / 20
print(f"copy {2 * x.numel() * 2 / dt / 1e12:.2f} TB/s (read+write)")
a = torch.randn(8192, 8192, device="cuda", dtype=torch.float16); b = torch.randn_like(a)
for _ in range(3): a @ b
torch.cuda.synchronize(); t = time.perf_counter()
for _ in range(10): a @ b
torch.cuda.synchronize(); dt = (time.perf_counter() - t) / 10
print(f"fp16 matmul {2 * 8192**3 / dt / 1e12:.0f} TFLOP/s")
EOF
    status
    ;;
wait)
    for _ in $(seq 1 "${1:-540}"); do [ -f "$W/all.done" ] && break; sleep 1; done
    cat "$W/export.log"; status
    ;;
bench)
    size=$1
    shift
    for _ in $(seq 1 480); do [ -f "$W/$size.done" ] && break; sleep 1; done
    [ -f "$W/$size.done" ] || { echo "export of $size not done"; status; exit 1; }
    mkdir -p "$OUT/$size"
    PYTHONPATH="/tmp/site:$W/py:src" python3 scripts/benchmark.py --model "$size" --device cuda \
        --repository "$W/$size/fp32" --fp16-repository "$W/$size/fp16" \
        --checkpoint "$W/ckpt/$size.pt" --out "$OUT/$size" --no-progress "$@" 2>&1 |
        tee "$W/bench_$size.log" | grep -v '^|' || true
    tail -n 60 "$OUT/$size/results.md"
    ;;
before)
    size=$1
    shift
    mkdir -p "$OUT/${size}_before"
    PYTHONPATH="/tmp/site:$W/py:src" python3 scripts/benchmark.py --model "$size" --device cuda \
        --repository "$W/$size/before_fp32" --fp16-repository "$W/$size/before_fp16" \
        --backends onnxruntime --label before --out "$OUT/${size}_before" --no-progress "$@" 2>&1 |
        tee "$W/before_$size.log" | grep -v '^|' || true
    tail -n 40 "$OUT/${size}_before/results.md"
    ;;
pytriton)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .carry_pt/*.whl
    ls /tmp/site | head -40
    status
    ;;
triton)
    size=$1 precision=$2
    shift 2
    for _ in $(seq 1 480); do [ -f "$W/$size.done" ] && break; sleep 1; done
    repo="$W/$size/$precision"
    # The python backend's stub embeds the interpreter without PYTHONPATH: the GPU build of
    # ONNX Runtime must replace the CPU one in the environment itself.
    if ! python3 -m pip show -q onnxruntime-gpu 2>/dev/null; then
        python3 -m pip uninstall -q -y onnxruntime
        python3 -m pip install -q --no-index --no-deps --no-cache-dir "$W/$WHEEL"
    fi
    export PYTHONPATH="/tmp/site:$W/py:$PWD/src"
    # The GPU configs as committed for base_plus, rewritten for SIZE (TensorRT is asked
    # for; without its libraries the backend logs the fallback to the CUDA EP).
    python3 scripts/configure_repository.py --repository "$repo" --model "$size"
    log="$OUT/server_${size}_${precision}.log"
    python3 scripts/serve_local.py --repository "$repo" --http-port 8000 --grpc-port 8001 \
        --metrics-port 8002 --ready-timeout 300 >"$log" 2>&1 &
    server=$!
    for _ in $(seq 1 300); do
        curl -sf localhost:8000/v2/health/ready && break
        kill -0 $server 2>/dev/null || { cat "$log"; exit 1; }
        sleep 1
    done
    grep -E "model.py" "$log" | head -8
    if grep -q "on CPUExecutionProvider" "$log"; then echo "backend on the CPU: stop"; exit 1; fi
    mkdir -p "$OUT/triton_${size}_$precision"
    timeout "${BENCH_TIMEOUT:-360}" python3 scripts/benchmark.py --model "$size" --device cuda --repository "$repo" \
        --backends triton,onnxruntime --url 127.0.0.1:8000 --grpc-url 127.0.0.1:8001 \
        --label "triton $precision" --out "$OUT/triton_${size}_$precision" --no-progress "$@" 2>&1 |
        grep -v '^|' || true
    curl -s localhost:8002/metrics | grep -E "^nv_inference_(exec|request)_count|nv_gpu_memory_used" >"$OUT/triton_${size}_$precision/metrics.txt" || true
    nvidia-smi --query-gpu=memory.used --format=csv >>"$OUT/triton_${size}_$precision/metrics.txt"
    kill -TERM $server; wait $server || true
    tail -n 50 "$OUT/triton_${size}_$precision/results.md"
    ;;
*)
    echo "unknown step $step" >&2
    exit 2
    ;;
esac
