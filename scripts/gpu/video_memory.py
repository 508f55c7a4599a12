#!/usr/bin/env python3
"""Where a ``sam2_video`` GPU instance's memory goes: the process's device memory
(``nvidia-smi``'s count for this process), torch's reserve and what tensors use, after each
stage of making the instance as the backend makes it (the CUDA context, Meta's predictor
built and moved, the engine warmed up, which ends by giving torch's cache back). What is not
torch's reserve is the context, its loaded kernels and the libraries' own memory. One JSON
line.

    python scripts/gpu/video_memory.py --checkpoint C --model base_plus --out OUT/video_memory.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from sam2_triton.bench.report import append_json_line


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--model", default="base_plus")
    p.add_argument("--torch-compile", default="none")
    p.add_argument("--out", type=Path)
    args = p.parse_args()

    import torch

    from sam2_triton.bench.profile import device_mib_by_process
    from sam2_triton.models import get_model_size
    from sam2_triton.sessions.runtime import torch_device
    from sam2_triton.sessions.video import VideoLimits, VideoSessionEngine, build_video_predictor

    device = torch_device("GPU", 0)
    stages: dict[str, dict] = {}

    def record(stage: str) -> None:
        torch.cuda.synchronize(device)
        process = device_mib_by_process().get(os.getpid(), 0)
        reserved = torch.cuda.memory_reserved(device) >> 20
        stages[stage] = {
            "process_mib": process,
            "reserved_mib": reserved,
            "in_use_mib": torch.cuda.memory_allocated(device) >> 20,
            "not_torch_mib": process - reserved,
        }
        print(stage, stages[stage], flush=True)

    torch.zeros(1, device=device)
    record("context")
    predictor = build_video_predictor(
        get_model_size(args.model),
        args.checkpoint,
        device,
        torch_compile=args.torch_compile,
        precision="bfloat16",
    )
    record("predictor_on_device")
    engine = VideoSessionEngine(predictor, device, VideoLimits(), precision="bfloat16")
    engine.warm()
    record("engine_warm")
    row = {"model": args.model, "torch_compile": args.torch_compile, "stages": stages}
    append_json_line(row, args.out)
    print(json.dumps(row))


if __name__ == "__main__":
    main()
