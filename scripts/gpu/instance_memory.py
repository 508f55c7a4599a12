#!/usr/bin/env python3
"""Where one ``sam2_session`` GPU instance's device memory goes, by what allocated it.

Builds the session engine as a GPU instance does (PyTorch networks, ``torch.compile``, CUDA
graphs, warm-up) with torch's allocation history on, then, loaded and again after
``--sessions`` sessions' starts and clicks (full masks: the largest answers) and the idle
release, writes one JSON line: the process's device memory as ``nvidia-smi`` counts it,
torch's reserve and what tensors use, and the bytes in use grouped by the allocating call
(the innermost frame in this package, else in torch), in the sessions' pool, the graphs'
pool or torch's own cache.

    python scripts/gpu/instance_memory.py --checkpoint C --out OUT/instance_memory.jsonl
"""

from __future__ import annotations

import argparse
import os
from collections import Counter
from pathlib import Path

from sam2_triton.bench.report import append_json_line


def where(frames: list[dict]) -> str:
    """The allocating call: the innermost frame in sam2_triton, else in torch."""
    for package in ("sam2_triton", "torch"):
        for frame in frames:
            if package in frame.get("filename", ""):
                name = frame["filename"].split(package, 1)[1].lstrip("/")
                return f"{package}/{name}:{frame['line']} {frame['name']}"
    return "unknown"


def segment_origins(snapshot: dict) -> dict[int, str]:
    """The allocating call of each segment (its address → :func:`where`), from the
    allocation history's segment allocations (a later one at an address wins)."""
    origins = {}
    for trace in snapshot.get("device_traces", []):
        for event in trace:
            if event["action"] == "segment_alloc":
                origins[event["addr"]] = where(event.get("frames", []))
    return origins


def breakdown(engine, top: int) -> dict:
    import torch

    from sam2_triton.bench.profile import cuda_stack_limit, device_mib_by_process

    torch.cuda.synchronize()
    sessions_pool = getattr(engine._session_pool, "id", None)
    groups: Counter = Counter()
    reserved_by_call: Counter = Counter()
    pools: Counter = Counter()
    snapshot = torch.cuda.memory._snapshot()
    origins = segment_origins(snapshot)
    for segment in snapshot["segments"]:
        pool_id = tuple(segment.get("segment_pool_id", (0, 0)))
        pool = "cache" if pool_id == (0, 0) else "graphs"
        if sessions_pool is not None and pool_id == tuple(sessions_pool):
            pool = "sessions"
        pools[f"{pool} reserved"] += segment["total_size"]
        origin = origins.get(segment["address"], "unknown")
        reserved_by_call[f"{pool}: {origin}"] += segment["total_size"]
        for block in segment["blocks"]:
            if block["state"] == "active_allocated":
                pools[f"{pool} in use"] += block["size"]
                groups[f"{pool}: {where(block.get('frames', []))}"] += block["size"]
    mib = 2**20
    # This process's share as nvidia-smi counts it (not the device's: a server may share it).
    process_gib = round(device_mib_by_process().get(os.getpid(), 0) / 1024, 2)
    reserved = torch.cuda.memory_reserved()
    return {
        "process_gib": process_gib,
        "reserved_mib": round(reserved / mib),
        "in_use_mib": round(torch.cuda.memory_allocated() / mib),
        # The CUDA context, loaded kernels, the stack's local memory: not torch's.
        "not_torch_mib": round(process_gib * 1024 - reserved / mib),
        "stack_limit_bytes": cuda_stack_limit(),
        "pools_mib": {k: round(v / mib) for k, v in sorted(pools.items())},
        "by_call_mib": {k: round(v / mib, 1) for k, v in groups.most_common(top)},
        "reserved_by_segment_call_mib": {
            k: round(v / mib, 1) for k, v in reserved_by_call.most_common(top)
        },
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--model", default="base_plus")
    p.add_argument("--torch-compile", default="default")
    p.add_argument("--sessions", type=int, default=16)
    p.add_argument("--top", type=int, default=25)
    p.add_argument(
        "--shrink-stack",
        action="store_true",
        help="after loading, set the CUDA context's stack limit back to 1 KiB per thread "
        "and measure again (a kernel that needs more raises it again)",
    )
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()

    import time

    import torch

    from sam2_triton.bench.sessions import FULL_OUTPUTS, clicks, instance_engine, photo_jpeg
    from sam2_triton.sessions.image import SessionRequest
    from sam2_triton.sessions.torch_networks import TorchNetworks

    torch.cuda.memory._record_memory_history(max_entries=2_000_000)
    networks = TorchNetworks(args.model, args.checkpoint, "fp16", args.torch_compile)
    engine = instance_engine(torch.device("cuda"), networks=networks)
    row = {"warm_s": round(engine.warm(), 1)}

    def measure(stage: str) -> None:
        row[stage] = breakdown(engine, args.top)
        headline = ("process_gib", "reserved_mib", "not_torch_mib", "stack_limit_bytes")
        print(stage, {k: row[stage][k] for k in headline}, row[stage]["pools_mib"], flush=True)

    measure("loaded")
    if args.shrink_stack:
        from sam2_triton.bench.profile import cuda_stack_limit

        cuda_stack_limit(1024)
        measure("stack_shrunk")
    jpeg, prompts = photo_jpeg(), clicks((1080, 1920))
    keys = list(range(args.sessions))
    for first in range(0, len(keys), 8):
        engine.execute([SessionRequest(k, start=True, image_bytes=jpeg) for k in keys[first:][:8]])
    for prompt in prompts:
        requests = [
            SessionRequest(
                k,
                points=prompt["point_coords"],
                labels=prompt["point_labels"],
                outputs=frozenset(FULL_OUTPUTS),
            )
            for k in keys
        ]
        for first in range(0, len(requests), 16):
            engine.execute(requests[first : first + 16])
    measure("after_sessions")
    time.sleep(engine.limits.memory_release_idle_s + 1)
    engine.idle_release.poll()
    measure("after_idle_release")
    append_json_line(row, args.out)


if __name__ == "__main__":
    main()
