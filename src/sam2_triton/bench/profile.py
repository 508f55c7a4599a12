"""Where the models' time goes on a device: ONNX Runtime's profile, FLOPs, CUDA graphs.

For one model size, on the exported graphs the servers run (the encoder's fused
``model.cuda.onnx`` on a GPU where exported):

* the two ceilings of the device (a large device-to-device copy, an FP16 matrix product);
* the encoder's and the decoder's FLOPs per item (``torch.utils.flop_counter`` on the very
  modules the graphs are traced from), so each timing gives achieved TFLOP/s;
* latency and throughput of each graph at each batch through ONNX Runtime with I/O binding
  (:class:`~sam2_triton.sessions.runtime.TorchOrtSession`) and, on a GPU, at batch 1 with
  CUDA graphs (:class:`~sam2_triton.sessions.runtime.CudaGraphOrtSession`);
* ONNX Runtime's profiler over a few runs at batch 1: the share of each operator type and
  the slowest nodes;
* on a GPU, the kernels themselves (CUPTI through ``torch.profiler``, which records every
  kernel of the process, ONNX Runtime's too, without a synchronisation between nodes): device
  time per run by kernel class and the top kernels, for ONNX Runtime and PyTorch eager.

    python scripts/profile_models.py --model base_plus --repository R --checkpoint C --out D
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sam2_triton.export import (
    CUDA_MODEL_FILENAME,
    DECODER_OUTPUTS,
    ENCODER_OUTPUTS,
    TENSOR_SHAPES,
    example_decoder_inputs,
)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_used_gib() -> float:
    """GiB of the current CUDA device in use, by every process (as ``nvidia-smi`` counts)."""
    import torch

    free, total = torch.cuda.mem_get_info()
    return round((total - free) / 2**30, 2)


def _nvidia_smi(what: str, fields: str) -> list[list[str]]:
    """The rows of ``nvidia-smi --query-WHAT=FIELDS`` (CSV, no header, no units)."""
    import subprocess

    out = subprocess.run(
        ["nvidia-smi", f"--query-{what}={fields}", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [[f.strip() for f in line.split(",")] for line in out.splitlines() if line.strip()]


def device_mib_by_process_and_gpu() -> dict[tuple[int, int], int]:
    """Each process's memory on each GPU as ``nvidia-smi`` counts it: ``{(pid, GPU): MiB}``
    (nvidia-smi's GPU indices, which ``CUDA_VISIBLE_DEVICES`` does not renumber)."""
    index = {bus: int(i) for i, bus in _nvidia_smi("gpu", "index,pci.bus_id")}
    rows = _nvidia_smi("compute-apps", "pid,gpu_bus_id,used_memory")
    return {(int(pid), index[bus]): int(mib) for pid, bus, mib in rows}


def device_mib_by_process() -> dict[int, int]:
    """Each process's GPU memory as ``nvidia-smi`` counts it, over all GPUs: ``{pid: MiB}``."""
    total: dict[int, int] = {}
    for (pid, _gpu), mib in device_mib_by_process_and_gpu().items():
        total[pid] = total.get(pid, 0) + mib
    return total


def cuda_stack_limit(set_bytes: int | None = None) -> int:
    """The per-thread stack size (bytes) that the current CUDA context reserves local memory
    for, on every thread the GPU can hold at once (the driver's ``CU_LIMIT_STACK_SIZE``: 1
    KiB is about 260 MiB on a 132-SM Hopper GPU); the driver raises it for good when a kernel
    needs more. ``set_bytes``: set it first (the reservation follows)."""
    import ctypes

    import torch

    torch.cuda.init()
    driver = ctypes.CDLL("libcuda.so.1")
    stack_size = 0  # CU_LIMIT_STACK_SIZE
    if set_bytes is not None:
        status = driver.cuCtxSetLimit(stack_size, ctypes.c_size_t(set_bytes))
        if status:
            raise RuntimeError(f"cuCtxSetLimit failed with CUresult {status}")
    value = ctypes.c_size_t()
    status = driver.cuCtxGetLimit(ctypes.byref(value), stack_size)
    if status:
        raise RuntimeError(f"cuCtxGetLimit failed with CUresult {status}")
    return value.value


def torch_memory_mib(device) -> dict:
    """What torch's caching allocator holds on ``device``, MiB: ``allocated`` (live tensors),
    ``reserved`` (with the cached free blocks), and ``pools``: reserved per memory pool (key
    ``"default"``, or the pool id of a CUDA graph's private pool), from its snapshot."""
    import torch

    mib = 2**20
    pools: dict[str, float] = {}
    for segment in torch.cuda.memory_snapshot():
        if segment.get("device", device.index or 0) != (device.index or 0):
            continue
        pool = tuple(segment.get("segment_pool_id", (0, 0)))
        key = "default" if pool == (0, 0) else f"graph pool {pool[0]}.{pool[1]}"
        pools[key] = pools.get(key, 0.0) + segment["total_size"] / mib
    return {
        "allocated": round(torch.cuda.memory_allocated(device) / mib, 1),
        "reserved": round(torch.cuda.memory_reserved(device) / mib, 1),
        "pools": {k: round(v, 1) for k, v in sorted(pools.items())},
    }


def time_call(call, device, iterations: int, warmup: int, min_time_s: float) -> dict:
    """Median/p90 latency (ms) of ``call()`` after ``warmup`` calls, at least ``iterations``
    calls and ``min_time_s`` seconds."""
    for _ in range(warmup):
        call()
    _sync(device)
    times = []
    start = time.perf_counter()
    while len(times) < iterations or time.perf_counter() - start < min_time_s:
        t0 = time.perf_counter()
        call()
        _sync(device)
        times.append(time.perf_counter() - t0)
    ms = np.asarray(times) * 1e3
    return {
        "p50_ms": round(float(np.median(ms)), 4),
        "p90_ms": round(float(np.percentile(ms, 90)), 4),
        "calls": len(ms),
    }


def ceilings(device) -> dict:
    """Copy bandwidth (TB/s, bytes read + written) and FP16 matrix-product rate (TFLOP/s)."""
    import torch

    if device.type != "cuda":
        return {}
    x = torch.randn(2**28, device=device, dtype=torch.float16)
    y = torch.empty_like(x)
    copy = time_call(lambda: y.copy_(x), device, 20, 3, 0.0)
    a = torch.randn(8192, 8192, device=device, dtype=torch.float16)
    b = torch.randn_like(a)
    mm = time_call(lambda: a @ b, device, 10, 3, 0.0)
    return {
        "copy_tb_s": round(2 * x.numel() * 2 / (copy["p50_ms"] / 1e3) / 1e12, 2),
        "fp16_matmul_tflop_s": round(2 * 8192**3 / (mm["p50_ms"] / 1e3) / 1e12, 1),
    }


def flops(model_size: str, checkpoint) -> dict:
    """FLOPs of one image through the encoder and of one prompt (2 points) through the
    decoder, counted by torch on the modules the ONNX graphs are traced from."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from sam2_triton import export
    from sam2_triton.models import get_model_size

    model = export.load_sam2(get_model_size(model_size), checkpoint)
    out = {}
    with torch.no_grad():
        encoder = export.image_encoder(model)
        with FlopCounterMode(display=False) as counter:
            encoder(torch.randn(1, *TENSOR_SHAPES["image"]))
        out["encoder_gflop_per_image"] = round(counter.get_total_flops() / 1e9, 2)
        decoder = export.prompt_decoder(model)
        with FlopCounterMode(display=False) as counter:
            decoder(*example_decoder_inputs(1, 2))
        out["decoder_gflop_per_prompt"] = round(counter.get_total_flops() / 1e9, 3)
    return out


def graph_paths(repository, device) -> dict[str, Path]:
    """The encoder's and decoder's files, as the servers choose them on ``device``."""
    repository = Path(repository)
    encoder = repository / "sam2_encoder" / "1" / "model.onnx"
    if device.type == "cuda" and encoder.with_name(CUDA_MODEL_FILENAME).is_file():
        encoder = encoder.with_name(CUDA_MODEL_FILENAME)
    return {"encoder": encoder, "decoder": repository / "sam2_decoder" / "1" / "model.onnx"}


def model_feeds(model: str, batch: int, device) -> tuple[dict, dict]:
    """Inputs (torch, on ``device``) and output shapes for one run at ``batch``."""
    import torch

    rng = np.random.default_rng(batch)
    if model == "encoder":
        feed = {"image": rng.standard_normal((batch, *TENSOR_SHAPES["image"]), np.float32)}
        names = ENCODER_OUTPUTS
    else:
        feed = {
            n: rng.standard_normal((batch, *TENSOR_SHAPES[n]), np.float32) for n in ENCODER_OUTPUTS
        }
        feed["point_coords"] = rng.uniform(0, 1024, (batch, 2, 2)).astype(np.float32)
        feed["point_labels"] = np.ones((batch, 2), np.float32)
        feed["mask_input"] = np.zeros((batch, 1, 256, 256), np.float32)
        feed["has_mask_input"] = np.zeros((batch, 1), np.float32)
        names = DECODER_OUTPUTS[:2]
    tensors = {n: torch.from_numpy(v).to(device) for n, v in feed.items()}
    return tensors, {n: (batch, *TENSOR_SHAPES[n]) for n in names}


def onnx_runtime_profile(path: Path, device, model: str, runs: int = 10) -> dict:
    """ONNX Runtime's profiler over ``runs`` runs at batch 1: time per operator type (share
    of the nodes' total) and the ten slowest nodes."""
    import onnxruntime as ort

    from sam2_triton.sessions.runtime import providers_for

    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = f"/tmp/sam2_profile_{model}"
    session = ort.InferenceSession(str(path), options, providers=providers_for(device))
    feed, _ = model_feeds(model, 1, device)
    host = {n: v.cpu().numpy() for n, v in feed.items()}
    for _ in range(runs + 2):
        session.run(None, host)
    trace = json.loads(Path(session.end_profiling()).read_text())
    by_op: Counter = Counter()
    by_node: Counter = Counter()
    for event in trace:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            op = event.get("args", {}).get("op_name", "?")
            by_op[op] += event["dur"]
            by_node[(event["name"][: -len("_kernel_time")], op)] += event["dur"]
    total = sum(by_op.values()) or 1
    per_run = total / (runs + 2) / 1e3
    return {
        "nodes_ms_per_run": round(per_run, 3),
        "by_op_type": [
            {"op": op, "share": round(t / total, 4), "ms_per_run": round(t / (runs + 2) / 1e3, 3)}
            for op, t in by_op.most_common(12)
        ],
        "slowest_nodes": [
            {"node": node, "op": op, "ms_per_run": round(t / (runs + 2) / 1e3, 3)}
            for (node, op), t in by_node.most_common(10)
        ],
    }


#: Kernel classes by name (first match wins), for :func:`kernel_profile`'s summary.
KERNEL_CLASSES = (
    ("attention", ("fmha", "flash", "attention", "sdpa", "softmax")),
    # before the matrix products: cuDNN's convolutions are "implicit_gemm" kernels
    ("convolution", ("conv", "implicit", "winograd", "dgrad", "wgrad", "fft")),
    ("matrix product", ("gemm", "sm90_xmma", "cutlass", "cublas", "matmul", "nvjet")),
    ("normalisation", ("layernorm", "layer_norm", "norm")),
    (
        "copy, transpose, layout",
        (
            "transpose",
            "copy",
            "memcpy",
            "memset",
            "nchw",
            "nhwc",
            "concat",
            "slice",
            "gather",
            "pad",
            "cat_",
            "index",
        ),
    ),
    (
        "elementwise, activation",
        (
            "elementwise",
            "gelu",
            "add",
            "mul",
            "cast",
            "binary",
            "unary",
            "vectorized",
            "reduce",
            "where",
        ),
    ),
)


def kernel_class(name: str) -> str:
    """The class of a CUDA kernel by its (mangled or demangled) name."""
    low = name.lower()
    return next((c for c, keys in KERNEL_CLASSES if any(k in low for k in keys)), "other")


def kernel_profile(call, device, runs: int = 10, top: int = 12) -> dict:
    """Device time of ``call()`` by kernel, from CUPTI (``torch.profiler``): per run, the
    total, its split by :func:`kernel_class` and the ``top`` kernels. The runs are back to
    back with one synchronisation at the end, as served work runs."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        call()
    _sync(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(runs):
            call()
        _sync(device)
    by_name: Counter = Counter()
    launches: Counter = Counter()
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA and e.device_time > 0:
            by_name[e.name] += e.device_time  # microseconds
            launches[e.name] += 1
    total = sum(by_name.values()) or 1
    classes: Counter = Counter()
    for name, t in by_name.items():
        classes[kernel_class(name)] += t
    return {
        "device_ms_per_run": round(total / runs / 1e3, 3),
        "kernels_per_run": round(sum(launches.values()) / runs, 1),
        "by_class": [
            {"class": c, "share": round(t / total, 4), "ms_per_run": round(t / runs / 1e3, 3)}
            for c, t in classes.most_common()
        ],
        "top": [
            {
                "kernel": name[:120],
                "class": kernel_class(name),
                "share": round(t / total, 4),
                "ms_per_run": round(t / runs / 1e3, 3),
                "calls_per_run": round(launches[name] / runs, 1),
            }
            for name, t in by_name.most_common(top)
        ],
    }


def torch_eager(
    model_size: str,
    checkpoint,
    device,
    encoder_batches,
    decoder_batches,
    iterations: int,
    min_time_s: float,
    compile_modes: Sequence[str] = (),
) -> list[dict]:
    """Meta's modules in PyTorch eager, FP16 autocast on a GPU (FP32 on the CPU); then, for
    each of ``compile_modes``, the same modules through ``torch.compile`` in that mode
    (static shapes: one compilation per batch size, done in the untimed warm-up runs)."""
    import torch

    from sam2_triton import export
    from sam2_triton.models import get_model_size

    model = export.load_sam2(get_model_size(model_size), checkpoint).to(device).eval()
    autocast = torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda" else None
    modules = {"encoder": export.image_encoder(model), "decoder": export.prompt_decoder(model)}
    rows = []
    for mode in ("eager", *compile_modes):
        for name, batches in (("encoder", encoder_batches), ("decoder", decoder_batches)):
            module = modules[name]
            if mode != "eager":
                module = torch.compile(module, mode=mode, dynamic=False)
            for batch in batches:
                feed, _ = model_feeds(name, batch, device)
                args = [feed[n] for n in (["image"] if name == "encoder" else feed)]

                def call(module=module, args=args):
                    # Each call a new step of the compiled CUDA graphs (reduce-overhead),
                    # whose outputs the next replay may overwrite: nothing here keeps them.
                    torch.compiler.cudagraph_mark_step_begin()
                    with torch.no_grad(), autocast or contextlib.nullcontext():
                        return module(*args)

                started = time.perf_counter()
                stats = time_call(call, device, iterations, 3, min_time_s)
                row = {"runtime": f"pytorch {mode}", "model": name, "batch": batch, **stats}
                if mode != "eager":  # the warm-up's compilation included
                    row["seconds_with_compilation"] = round(time.perf_counter() - started, 1)
                if device.type == "cuda":
                    row["kernels"] = kernel_profile(call, device)
                rows.append(row)
    return rows


def profile(
    model_size: str,
    repository,
    checkpoint,
    device_name: str = "cuda",
    encoder_batches=(1, 8, 16),
    decoder_batches=(1, 64),
    iterations: int = 20,
    min_time_s: float = 1.0,
    torch_baseline: bool = True,
    torch_compile_modes: Sequence[str] = (),
) -> dict:
    """Everything of the module docstring, as one JSON-ready report."""
    import torch

    from sam2_triton.sessions.runtime import CudaGraphOrtSession, TorchOrtSession

    device = torch.device(device_name)
    paths = graph_paths(repository, device)
    report: dict = {
        "model_size": model_size,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "files": {k: str(v) for k, v in paths.items()},
        "ceilings": ceilings(device),
        "flops": flops(model_size, checkpoint),
        "rows": [],
        "profile": {},
    }
    runners = {"encoder": [("onnxruntime", TorchOrtSession(paths["encoder"], device))]}
    runners["decoder"] = [("onnxruntime", TorchOrtSession(paths["decoder"], device))]
    if device.type == "cuda":
        for model in ("encoder", "decoder"):
            graphs = CudaGraphOrtSession(paths[model], device)
            runners[model].append(("onnxruntime + CUDA graphs", graphs))
    for model, batches in (("encoder", encoder_batches), ("decoder", decoder_batches)):
        for runtime, runner in runners[model]:
            for batch in batches:
                feed, shapes = model_feeds(model, batch, device)

                def call(runner=runner, feed=feed, shapes=shapes):
                    return runner.run(feed, shapes)

                stats = time_call(call, device, iterations, 3, min_time_s)
                row = {"runtime": runtime, "model": model, "batch": batch, **stats}
                if isinstance(runner, CudaGraphOrtSession):
                    row["graphs"] = runner.error or "on"
                if device.type == "cuda":
                    row["kernels"] = kernel_profile(call, device)
                report["rows"].append(row)
        report["profile"][model] = onnx_runtime_profile(paths[model], device, model)
    if torch_baseline:
        report["rows"] += torch_eager(
            model_size,
            checkpoint,
            device,
            encoder_batches,
            decoder_batches,
            iterations,
            min_time_s,
            torch_compile_modes,
        )
    per = {
        "encoder": report["flops"]["encoder_gflop_per_image"],
        "decoder": report["flops"]["decoder_gflop_per_prompt"],
    }
    for row in report["rows"]:
        items_per_s = row["batch"] / (row["p50_ms"] / 1e3)
        row["items_per_s"] = round(items_per_s, 1)
        row["tflop_s"] = round(per[row["model"]] * items_per_s / 1e3, 2)
    return report


def markdown(report: dict) -> str:
    """Tables of :func:`profile`'s report."""
    c, f = report["ceilings"], report["flops"]
    lines = [
        f"# {report['model_size']} on {report['device']}",
        "",
        f"Ceilings: copy {c.get('copy_tb_s', '—')} TB/s, FP16 matrix products "
        f"{c.get('fp16_matmul_tflop_s', '—')} TFLOP/s. Work: encoder "
        f"{f['encoder_gflop_per_image']} GFLOP per image, decoder "
        f"{f['decoder_gflop_per_prompt']} GFLOP per prompt (2 points).",
        "",
        "| runtime | model | batch | p50 ms | p90 ms | items/s | TFLOP/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        runtime = r["runtime"] + (f" ({r['graphs']})" if r.get("graphs", "on") != "on" else "")
        lines.append(
            f"| {runtime} | {r['model']} | {r['batch']} | {r['p50_ms']:.3f} | {r['p90_ms']:.3f} "
            f"| {r['items_per_s']} | {r['tflop_s']} |"
        )
    profiled = [r for r in report["rows"] if "kernels" in r]
    if profiled:
        lines += [
            "",
            "Device time by kernel class (CUPTI; back-to-back runs, one sync at the end):",
            "",
            "| runtime | model | batch | device ms per run | kernels per run | by class |",
            "|---|---|---|---|---|---|",
        ]
        for r in profiled:
            k = r["kernels"]
            split = ", ".join(f"{c['class']} {c['share']:.0%}" for c in k["by_class"][:5])
            lines.append(
                f"| {r['runtime']} | {r['model']} | {r['batch']} | {k['device_ms_per_run']} "
                f"| {k['kernels_per_run']} | {split} |"
            )
        for r in profiled:
            if r["model"] == "encoder" and r["batch"] in (1, 8):
                lines += [
                    "",
                    f"Top kernels, {r['runtime']}, encoder, batch {r['batch']}:",
                    "",
                    "| kernel | class | share | ms per run | calls per run |",
                    "|---|---|---|---|---|",
                ]
                lines += [
                    f"| `{t['kernel'][:80]}` | {t['class']} | {t['share']:.1%} "
                    f"| {t['ms_per_run']} | {t['calls_per_run']} |"
                    for t in r["kernels"]["top"][:8]
                ]
    for model, prof in report["profile"].items():
        lines += [
            "",
            f"{model}, batch 1, ONNX Runtime's profiler: {prof['nodes_ms_per_run']} ms of node "
            "time per run",
            "",
            "| op type | share | ms per run |",
            "|---|---|---|",
        ]
        lines += [
            f"| {o['op']} | {o['share']:.1%} | {o['ms_per_run']} |" for o in prof["by_op_type"]
        ]
    return "\n".join(lines) + "\n"


def by_model(rows: list[dict]) -> dict:
    """``{(runtime, model): {batch: p50_ms}}`` (for tests and summaries)."""
    out: dict = defaultdict(dict)
    for r in rows:
        out[(r["runtime"], r["model"])][r["batch"]] = r["p50_ms"]
    return dict(out)
