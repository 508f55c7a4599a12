#!/usr/bin/env python3
"""The served graphs under ONNX Runtime's CUDA EP options, one option set at a time.

For the encoder (the fused ``model.cuda.onnx``) and the decoder of an exported repository:
median latency at batch 1, throughput at a large batch, device memory in use, and the
largest difference of each output from the current options' (so a faster kernel that
changes the answers shows). Option sets: the current ``CUDA_EP_OPTIONS`` defaults; cuDNN's
exhaustive convolution search with its full workspace; NHWC convolutions; each attention
kernel ONNX Runtime's ``sdpa_kernel`` can force (its debug print, counted, says which kernel
each ``MultiHeadAttention`` node really ran); then the options that helped, together, and
with a CUDA graph at batch 1.

    python scripts/gpu/ort_options.py --repository REPO --out results.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import sys
import tempfile
from collections import Counter

import torch

from sam2_triton.bench.profile import device_used_gib, graph_paths, model_feeds, time_call
from sam2_triton.sessions.runtime import CudaGraphOrtSession, TorchOrtSession

EXHAUSTIVE = {"cudnn_conv_algo_search": "EXHAUSTIVE", "cudnn_conv_use_max_workspace": "1"}
NHWC = {"prefer_nhwc": "1"}
#: ONNX Runtime's AttentionBackend bits (contrib_ops/cpu/bert/attention_common.h).
SDPA = {"flash": 1, "efficient": 2, "trt fused": 4, "cudnn flash": 8, "math": 16}


def kernels_run(path, device, options: dict) -> dict[str, int]:
    """Which attention kernel each MultiHeadAttention node ran, from one run of a session
    created with ONNX Runtime's kernel debug print on (read when the kernels are built)."""
    os.environ["ORT_ENABLE_ATTENTION_KERNEL_DEBUG_INFO"] = "1"
    try:
        session = TorchOrtSession(path, device, provider_options=options)
    finally:
        del os.environ["ORT_ENABLE_ATTENTION_KERNEL_DEBUG_INFO"]
    feed, shapes = model_feeds("encoder", 1, device)
    with tempfile.TemporaryFile("w+") as log:
        sys.stdout.flush()
        saved = os.dup(1)
        os.dup2(log.fileno(), 1)
        try:
            session.run(feed, shapes)
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
        log.seek(0)
        return dict(Counter(re.findall(r"SdpaKernel=(\w+)", log.read())))


def measure(model: str, session, device, batch: int, reference: dict | None) -> dict:
    feed1, shapes1 = model_feeds(model, 1, device)
    one = time_call(lambda: session.run(feed1, shapes1), device, 30, 5, 1.5)
    feedb, shapesb = model_feeds(model, batch, device)
    many = time_call(lambda: session.run(feedb, shapesb), device, 10, 3, 1.5)
    out = session.run(feed1, shapes1)
    row = {
        "batch1_p50_ms": one["p50_ms"],
        f"batch{batch}_per_s": round(batch / many["p50_ms"] * 1e3, 1),
        "device_used_gib": device_used_gib(),
    }
    if reference is not None:
        row["max_abs_diff"] = {
            n: round(float((out[n] - reference[n]).abs().max()), 5) for n in reference
        }
    return row, out


def run_cases(model, path, device, batch, cases, graphs: bool = False) -> tuple[list, dict]:
    rows, reference = [], None
    for name, options in cases:
        try:
            cls = CudaGraphOrtSession if graphs and name.endswith("graph") else TorchOrtSession
            session = cls(path, device, provider_options=options)
            row, out = measure(model, session, device, batch, reference)
            reference = reference if reference is not None else out
            error = getattr(session, "error", None)
            if error:
                row["graph_error"] = error
        except Exception as e:  # noqa: BLE001 - an option this build refuses: say so, go on
            row = {"error": str(e).strip().splitlines()[0][:300]}
        row = {"model": model, "options": name, "provider_options": options, **row}
        print(json.dumps(row), flush=True)
        rows.append(row)
        session = None
        gc.collect()
        torch.cuda.empty_cache()
    return rows, reference


def faster(row: dict, base: dict, key: str) -> bool:
    return "error" not in base and key in base and row.get(key, 0) > 1.02 * base[key]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repository", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--encoder-batch", type=int, default=8)
    p.add_argument("--decoder-batch", type=int, default=64)
    args = p.parse_args()
    device = torch.device("cuda")
    paths = graph_paths(args.repository, device)
    report = {"encoder_file": paths["encoder"].name, "kernels": {}, "rows": []}

    for name, bits in [("default", None), *SDPA.items()]:
        options = {} if bits is None else {"sdpa_kernel": str(bits)}
        try:
            report["kernels"][name] = kernels_run(paths["encoder"], device, options)
        except Exception as e:  # noqa: BLE001
            report["kernels"][name] = {"error": str(e).strip().splitlines()[0][:300]}
        print("kernels", name, report["kernels"][name], flush=True)
        gc.collect()

    eb = args.encoder_batch
    cases = [
        ("current", {}),
        ("cudnn exhaustive", EXHAUSTIVE),
        ("nhwc", NHWC),
        *((f"sdpa {n}", {"sdpa_kernel": str(b)}) for n, b in SDPA.items()),
    ]
    rows, _ = run_cases("encoder", paths["encoder"], device, eb, cases)
    base, key = rows[0], f"batch{eb}_per_s"
    best = {}
    sdpa = [r for r in rows if r["options"].startswith("sdpa") and faster(r, base, key)]
    if sdpa:
        best.update(max(sdpa, key=lambda r: r[key])["provider_options"])
    for r in rows[1:3]:
        if faster(r, base, key):
            best.update(r["provider_options"])
    more, _ = run_cases(
        "encoder",
        paths["encoder"],
        device,
        eb,
        [
            ("current", {}),
            ("current graph", {}),
            ("helped, together", best),
            ("helped, together graph", best),
        ],
        graphs=True,
    )
    report["rows"] += rows + more

    db = args.decoder_batch
    cases = [
        ("current", {}),
        ("cudnn exhaustive", EXHAUSTIVE),
        ("nhwc", NHWC),
        ("current graph", {}),
        ("cudnn exhaustive graph", EXHAUSTIVE),
    ]
    rows, _ = run_cases("decoder", paths["decoder"], device, db, cases, graphs=True)
    report["rows"] += rows
    report["torch"] = torch.__version__
    import onnxruntime

    report["onnxruntime"] = onnxruntime.__version__
    report["device"] = torch.cuda.get_device_name()
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print("| model | options | batch 1 p50 ms | throughput | GiB in use | max abs diff |")
    print("|---|---|---|---|---|---|")
    for r in report["rows"]:
        rate = next((v for k, v in r.items() if k.endswith("_per_s")), "")
        diff = max(r.get("max_abs_diff", {}).values(), default="")
        print(
            f"| {r['model']} | {r['options']} | {r.get('batch1_p50_ms', r.get('error'))} "
            f"| {rate} | {r.get('device_used_gib', '')} | {diff} |"
        )


if __name__ == "__main__":
    main()
