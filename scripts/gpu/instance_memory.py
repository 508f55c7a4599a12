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
import json
from collections import Counter
from pathlib import Path


def where(frames: list[dict]) -> str:
    """The allocating call: the innermost frame in sam2_triton, else in torch."""
    for package in ("sam2_triton", "torch"):
        for frame in frames:
            if package in frame.get("filename", ""):
                name = frame["filename"].split(package, 1)[1].lstrip("/")
                return f"{package}/{name}:{frame['line']} {frame['name']}"
    return "unknown"


def breakdown(engine, top: int) -> dict:
    import torch

    from sam2_triton.bench.profile import device_used_gib

    torch.cuda.synchronize()
    sessions_pool = getattr(engine._session_pool, "id", None)
    groups: Counter = Counter()
    pools: Counter = Counter()
    for segment in torch.cuda.memory._snapshot()["segments"]:
        pool_id = tuple(segment.get("segment_pool_id", (0, 0)))
        pool = "cache" if pool_id == (0, 0) else "graphs"
        if sessions_pool is not None and pool_id == tuple(sessions_pool):
            pool = "sessions"
        pools[f"{pool} reserved"] += segment["total_size"]
        for block in segment["blocks"]:
            if block["state"] == "active_allocated":
                pools[f"{pool} in use"] += block["size"]
                groups[f"{pool}: {where(block.get('frames', []))}"] += block["size"]
    mib = 2**20
    return {
        "process_gib": device_used_gib(),
        "reserved_mib": round(torch.cuda.memory_reserved() / mib),
        "in_use_mib": round(torch.cuda.memory_allocated() / mib),
        "pools_mib": {k: round(v / mib) for k, v in sorted(pools.items())},
        "by_call_mib": {k: round(v / mib, 1) for k, v in groups.most_common(top)},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--model", default="base_plus")
    p.add_argument("--torch-compile", default="default")
    p.add_argument("--sessions", type=int, default=16)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()

    import time

    import torch

    from sam2_triton.bench.sessions import FULL_OUTPUTS, clicks, instance_engine, photo_jpeg
    from sam2_triton.sessions.image import SessionRequest
    from sam2_triton.sessions.torch_networks import TorchNetworks

    torch.cuda.memory._record_memory_history(max_entries=200_000)
    networks = TorchNetworks(args.model, args.checkpoint, "fp16", args.torch_compile)
    engine = instance_engine(torch.device("cuda"), networks=networks)
    row = {"warm_s": round(engine.warm(), 1), "loaded": breakdown(engine, args.top)}
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
    row["after_sessions"] = breakdown(engine, args.top)
    time.sleep(engine.limits.memory_release_idle_s + 1)
    engine.idle_release.poll()
    row["after_idle_release"] = breakdown(engine, args.top)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
