#!/usr/bin/env python3
"""Engines on a GPU other than 0, made as the ``sam2_session`` and ``sam2_video`` instances
make them: where their process holds device memory, also once their background threads
(the idle release) have run.

Builds the image session engine on ``--gpu`` (its device made current by ``torch_device``,
as an instance's is; PyTorch networks, ``torch.compile`` off) and warms it up; starts its
idle release, grows torch's cache by ``--burst-mib`` and waits until the release has given it
back (on the release's own thread). Then the same for a video engine (Meta's predictor,
eager, bfloat16). After each stage, this process's memory on each GPU (``nvidia-smi``): it
should appear on ``--gpu`` alone. One JSON line. Needs a machine with two GPUs or more.

    python scripts/gpu/second_gpu.py --checkpoint C --model tiny --gpu 1 --out OUT/second_gpu.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from sam2_triton.bench.report import append_json_line


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--model", default="tiny")
    p.add_argument("--gpu", type=int, default=1)
    p.add_argument("--burst-mib", type=int, default=1024)
    p.add_argument("--out", type=Path)
    args = p.parse_args()

    import torch

    from sam2_triton.bench.profile import device_mib_by_process_and_gpu
    from sam2_triton.bench.sessions import instance_engine
    from sam2_triton.models import get_model_size
    from sam2_triton.sessions.runtime import torch_device
    from sam2_triton.sessions.torch_networks import TorchNetworks
    from sam2_triton.sessions.video import VideoLimits, VideoSessionEngine, build_video_predictor

    device = torch_device("GPU", args.gpu)
    stages: dict[str, dict[int, int]] = {}

    def record(stage: str) -> None:
        torch.cuda.synchronize(device)
        used = device_mib_by_process_and_gpu()
        stages[stage] = {gpu: mib for (pid, gpu), mib in used.items() if pid == os.getpid()}
        print(f"{stage}: this process's MiB by GPU {stages[stage]}", flush=True)

    def burst_then_idle(engine, name: str) -> None:
        """A burst's cached memory (a tensor made and dropped on the engine's thread's
        device), then the idle release's thread gives it back."""
        release = engine.idle_release
        release.start()
        before = torch.cuda.memory_reserved(device)
        burst = torch.empty(args.burst_mib << 20, dtype=torch.uint8, device=device)
        del burst
        deadline = time.monotonic() + 4 * release.idle_s + 10
        while torch.cuda.memory_reserved(device) > before and time.monotonic() < deadline:
            time.sleep(0.2)
        given_back = torch.cuda.memory_reserved(device) <= before
        print(f"{name}: the idle release gave the burst back: {given_back}", flush=True)
        stages[f"{name}_released"] = {"given_back": given_back}  # type: ignore[assignment]
        record(f"{name}_after_idle_release")

    networks = TorchNetworks(args.model, args.checkpoint, "fp16", "none")
    sessions = instance_engine(device, networks=networks)
    sessions.warm()
    record("session_engine_warm")
    burst_then_idle(sessions, "session_engine")
    sessions.close()

    predictor = build_video_predictor(
        get_model_size(args.model), args.checkpoint, device, precision="bfloat16"
    )
    video = VideoSessionEngine(predictor, device, VideoLimits(), precision="bfloat16")
    video.warm()
    record("video_engine_warm")
    burst_then_idle(video, "video_engine")
    video.close()

    stray = {
        stage: {gpu: mib for gpu, mib in used.items() if gpu != args.gpu}
        for stage, used in stages.items()
        if "given_back" not in used
    }
    row = {"gpu": args.gpu, "model": args.model, "stages": stages, "on_other_gpus": stray}
    append_json_line(row, args.out)
    print(json.dumps(row))


if __name__ == "__main__":
    main()
