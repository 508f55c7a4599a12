#!/usr/bin/env bash
# The GPU measurements of docs/benchmarks.md, a step per call of the device tool (a machine
# with an H100, torch and onnx, a CPU-only onnxruntime and no network).
#
# What the machine lacks is carried (scripts/gpu/pack.py makes it, from `pip download`ed
# wheels; git-ignored): .carry1/base.tar.xz (sam2, hydra, tritonclient and its compiled
# dependencies, the embedded tritonserver of nvidia-pytriton) and onnxruntime-gpu (CUDA 13,
# sm_90 kernels only) split over .carry1/ort.part, .carry2/ort.part, ...
#
#   bash scripts/gpu/run.sh start                  # call 1, carry .carry1: unpack, exports
#   bash scripts/gpu/run.sh ort N [last]           # call N, carry .carryN: onnxruntime-gpu
#   bash scripts/gpu/run.sh models SIZE [flags]    # scripts/profile_models.py on SIZE
#   bash scripts/gpu/run.sh served SIZE [flags]    # serve_local.py (GPU configs) + benchmark
#                                                   # (env CONFIGURE_FLAGS, NAME: see the step)
#   bash scripts/gpu/run.sh numpy1 N               # numpy 1.26 from .carryN (see the step)
#   bash scripts/gpu/run.sh export_pinned SIZE     # exports on cores 8-15, in the background
#   bash scripts/gpu/run.sh runtimes SIZE V...     # scripts/gpu/session_runtimes.py per variant
#   bash scripts/gpu/run.sh sessions_repo SIZE     # sam2_session alone (pytorch runtime)
#   bash scripts/gpu/run.sh video [flags]          # scripts/benchmark_video.py (start none)
#   bash scripts/gpu/run.sh status
# Results go to $OUT (the device tool brings them back).
set -euo pipefail
W=/tmp/gpu
SITE=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
export PYTHONUNBUFFERED=1
step=${1:?step}
shift

status() {
    ls "$W" 2>/dev/null | tr '\n' ' '; echo
    [ -f "$W/export.log" ] && grep -E '^\$|\(|FAILED|exported' "$W/export.log" | tail -8
    return 0
}

wait_for() {  # the export of size $1, at most $2 s
    for _ in $(seq 1 "${2:-480}"); do [ -f "$W/$1.done" ] && return 0; sleep 1; done
    echo "export of $1 not done"; status; return 1
}

unpack() {  # a site-packages tree from archive $1 into this Python's site-packages
    rm -rf "$W/site" && tar -xJf "$1" -C "$W" && cp -r "$W/site/." "$SITE/" && rm -rf "$W/site"
}

case "$step" in
start)
    mkdir -p "$W" "$OUT"
    nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,clocks.sm,clocks.max.sm \
        --format=csv | tee "$OUT/machine.txt"
    python3 -c 'import sys, torch, onnx; print("python", sys.version.split()[0], "torch",
        torch.__version__, "cuda", torch.version.cuda, "onnx", onnx.__version__)' | tee -a "$OUT/machine.txt"
    cp .carry1/SHA256SUMS .carry1/ort.part "$W/"
    (cd .carry1 && sha256sum -c --ignore-missing SHA256SUMS)
    unpack .carry1/base.tar.xz
    # Python's zipfile (pack.py) drops the executable bits of the server and its stubs.
    chmod +x "$SITE"/pytriton/tritonserver/bin/* "$SITE"/pytriton/tritonserver/python_backend_stubs/*/*
    echo "$PWD/src" >"$SITE/sam2_triton_dev.pth"   # this checkout's package, for the stubs too
    python3 -c 'import sam2, hydra, tritonclient.http, sam2_triton; print("packages ok")'
    # Exports take minutes of CPU: they run on while the next calls bring onnxruntime-gpu.
    if [ "${1:-}" != none ]; then
        setsid nohup python3 scripts/gpu/export_all.py --out "$W" \
            --sizes "${1:-base_plus,tiny,large}" >"$W/export.log" 2>&1 </dev/null &
        sleep 5
    fi
    status
    ;;
ort)
    cat ".carry$1/ort.part" >>"$W/ort.part"
    if [ -n "${2:-}" ]; then
        mv "$W/ort.part" "$W/ort.tar.xz"
        (cd "$W" && sha256sum -c --ignore-missing SHA256SUMS)
        wait_for base_plus 300   # the exports import onnxruntime: swap it once they are done
        python3 -m pip uninstall -q -y onnxruntime || true   # the CPU build
        unpack "$W/ort.tar.xz"
        python3 -c 'import onnxruntime as o; o.preload_dlls(); print("onnxruntime", o.__version__,
            o.get_available_providers())' | tee -a "$OUT/machine.txt"
    fi
    status
    ;;
models)
    size=$1
    shift
    wait_for "$size"
    python3 scripts/profile_models.py --model "$size" --repository "$W/$size/fp16" \
        --checkpoint "$W/ckpt/$size.pt" --out "$OUT/profile_$size" "$@"
    ;;
served)
    size=$1
    shift
    repo="${REPO:-$W/$size/fp16}"
    [ -n "${REPO:-}" ] || wait_for "$size"
    # The GPU configs as generated for SIZE (TensorRT asked for; without its libraries the
    # backend runs the CUDA EP and the encoder's fused model.cuda.onnx), changed by
    # $CONFIGURE_FLAGS if set (e.g. "--session-instances 1"), served as $SERVE_FLAGS say;
    # results go to $OUT/*_$NAME.
    # sam2_video stays eager: its default compilation would spend 3-4 minutes of the device
    # call loading a model this step does not measure (CONFIGURE_FLAGS="--video-torch-compile
    # reduce-overhead" serves the default configs exactly, e.g. for their GPU memory).
    # shellcheck disable=SC2086  # the flags are words
    [ -n "${REPO:-}" ] || python3 scripts/configure_repository.py --repository "$repo" \
        --model "$size" --video-torch-compile none ${CONFIGURE_FLAGS:-} >/dev/null
    NAME=${NAME:-$size}
    log="$OUT/server_$NAME.log"
    nvidia-smi --query-gpu=memory.used --format=csv,noheader >"$OUT/memory_$NAME.txt"
    # shellcheck disable=SC2086  # $SERVE_FLAGS: serve_local's flags, e.g. "--load-model sam2_session"
    python3 scripts/serve_local.py --repository "$repo" --http-port 8000 --grpc-port 8001 \
        --metrics-port 8002 --ready-timeout 300 --max-restarts 0 --probe-interval 0 \
        ${SERVE_FLAGS:-} >"$log" 2>&1 &
    server=$!
    for _ in $(seq 1 300); do
        curl -sf localhost:8000/v2/health/ready >/dev/null && break
        kill -0 $server 2>/dev/null || { tail -50 "$log"; exit 1; }
        sleep 1
    done
    grep -E "model.py|sam2_session" "$log" | grep -v "^|" | head -12
    echo "loaded: $(nvidia-smi --query-gpu=memory.used --format=csv,noheader)" >>"$OUT/memory_$NAME.txt"
    nvidia-smi --query-compute-apps=pid,gpu_bus_id,used_memory --format=csv >>"$OUT/memory_$NAME.txt" || true
    timeout "${BENCH_TIMEOUT:-420}" python3 scripts/benchmark.py --model "$size" --device cuda \
        --repository "$repo" --backends triton --url 127.0.0.1:8000 --grpc-url 127.0.0.1:8001 \
        --label "$size fp16 served" --out "$OUT/served_$NAME" --no-progress "$@" 2>&1 |
        grep -v '^|' | tail -40 || true
    echo "after: $(nvidia-smi --query-gpu=memory.used --format=csv,noheader)" >>"$OUT/memory_$NAME.txt"
    nvidia-smi --query-compute-apps=pid,gpu_bus_id,used_memory --format=csv >>"$OUT/memory_$NAME.txt" || true
    # Idle: sam2_session gives a burst's cached memory back after memory_release_idle_s
    # (default 5 s; polled every half of it), so this waits $IDLE_WAIT s (default 12).
    sleep "${IDLE_WAIT:-12}"
    echo "after ${IDLE_WAIT:-12} s idle: $(nvidia-smi --query-gpu=memory.used --format=csv,noheader)" \
        >>"$OUT/memory_$NAME.txt"
    nvidia-smi --query-compute-apps=pid,gpu_bus_id,used_memory --format=csv >>"$OUT/memory_$NAME.txt" || true
    grep -h "gave back" "$log" | tail -4 >>"$OUT/memory_$NAME.txt" || true
    curl -s localhost:8002/metrics | grep -E "^nv_inference_(exec|request)_count|nv_gpu_memory" \
        >"$OUT/metrics_$NAME.txt" || true
    kill -TERM $server
    wait $server || true
    cat "$OUT/memory_$NAME.txt"
    [ -f "$OUT/served_$NAME/results.md" ] && tail -n 45 "$OUT/served_$NAME/results.md"
    ;;
sessions_repo)
    # A repository of sam2_session alone, on the pytorch runtime (torch.compile mode
    # $SESSION_COMPILE, default "default"; $SESSION_INSTANCES instances, default 2) and the
    # checkpoint itself: served with
    # REPO=$W/sessions_repo (needs no export and no onnxruntime-gpu). SMOOTH_MASKS=1: the
    # checkpoint of make_random_checkpoint.py --smooth-masks (several times fewer runs).
    mkdir -p "$W/ckpt"
    ckpt="$W/ckpt/$1.pt" smooth=()
    if [ -n "${SMOOTH_MASKS:-}" ]; then ckpt="$W/ckpt/$1_smooth.pt" smooth=(--smooth-masks); fi
    [ -f "$ckpt" ] || python3 scripts/make_random_checkpoint.py --model "$1" --out "$ckpt" "${smooth[@]}"
    python3 - "$W/sessions_repo" "$ckpt" "$1" "${SESSION_COMPILE:-default}" \
        "${SESSION_INSTANCES:-2}" <<'PY'
import dataclasses
import sys
from pathlib import Path

from sam2_triton import model_config as mc
from sam2_triton.files import write_text_atomic

repo, checkpoint, size, mode = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
params = mc.RepositoryParams(model_size=size)
instances = int(sys.argv[5])
session = dataclasses.replace(
    params.session, runtime="pytorch", torch_compile=mode, instance_count=instances
)
config = mc.session_config(dataclasses.replace(params, session=session))
config.parameters["weights"].string_value = checkpoint
write_text_atomic(repo / mc.SESSION / "config.pbtxt", mc.to_text(config))
(repo / mc.SESSION / "1").mkdir(exist_ok=True)
print("wrote", repo / mc.SESSION / "config.pbtxt")
PY
    ;;
runtimes)
    # scripts/gpu/session_runtimes.py: one session engine in process per variant given
    # (onnxruntime, or pytorch:MODE with MODE none, default, ...), each in a fresh process
    # (pinned to cores 0-7: an export may run beside it), then each pair's answers compared.
    size=$1
    shift
    mkdir -p "$W/sr"
    for v in "$@"; do
        if [ "$v" = onnxruntime ]; then
            wait_for "$size"
            flags=(--runtime onnxruntime)
        else
            flags=(--runtime pytorch --torch-compile "${v#pytorch:}")
        fi
        timeout "${RUNTIME_TIMEOUT:-360}" taskset -c 0-7 python3 scripts/gpu/session_runtimes.py \
            --model "$size" --repository "$W/$size/fp16" --checkpoint "$W/ckpt/$size.pt" \
            "${flags[@]}" --out "$W/sr/${v/:/_}.jsonl" 2>&1 | grep -vi warn | tail -4 || true
    done
    for a in "$W"/sr/*.npz; do
        for b in "$W"/sr/*.npz; do
            if [[ "$a" < "$b" ]]; then python3 scripts/gpu/session_runtimes.py --compare "$a" "$b"; fi
        done
    done | tee "$W/sr/compare.jsonl"
    cp "$W"/sr/* "$OUT/"
    ;;
export_pinned)
    # The exports of SIZE in the background on cores 8-15 (beside a measurement on 0-7).
    mkdir -p "$W/ckpt"
    [ -f "$W/ckpt/$1.pt" ] || python3 scripts/make_random_checkpoint.py --model "$1" --out "$W/ckpt/$1.pt"
    setsid nohup taskset -c 8-15 python3 scripts/gpu/export_all.py --out "$W" --sizes "$1" \
        >"$W/export.log" 2>&1 </dev/null &
    sleep 2
    ;;
numpy1)
    # The machine's numpy 2 breaks the embedded stub's string tensors (the video's frames):
    # a numpy 1.26 wheel carried in .carryN (pip download numpy==1.26.4 for cp312), as the
    # project's own installation pins numpy < 2 for nvidia-pytriton.
    python3 -m pip install -q --no-deps --no-index ".carry$1"/numpy-1.*.whl
    python3 -c 'import numpy; print("numpy", numpy.__version__)'
    ;;
video)
    # sam2_video runs Meta's predictor in PyTorch: no onnxruntime-gpu needed.
    timeout "${BENCH_TIMEOUT:-420}" python3 scripts/benchmark_video.py --model base_plus \
        --device gpu --out "$OUT/video" "$@" 2>&1 | tail -40 || true
    ;;
status)
    status
    ;;
*)
    echo "unknown step $step" >&2
    exit 2
    ;;
esac
