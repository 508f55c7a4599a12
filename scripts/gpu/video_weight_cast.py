#!/usr/bin/env python3
"""``sam2_video``'s bfloat16 weights against Meta's float32 ones under the same autocast: the
same masks bit for bit? How much memory and time do they save?

Builds base_plus's video predictor twice on the GPU (eager): with the weights as Meta's
checkpoint has them (float32, cast by autocast at every call) and with
``build_video_predictor(precision="bfloat16")`` (linear and convolution weights stored in
bfloat16). Each runs in a bfloat16 engine with the served limits and tracks the same video
(``make_frames``; one click per object), ``--repeats`` times in turn; reports the weights'
device memory, the median propagation frames/s, and how many mask pixels differ between
the two. One JSON line.

    python scripts/gpu/video_weight_cast.py --out OUT/video_weight_cast.jsonl
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import tempfile
from pathlib import Path

from sam2_triton.bench.report import append_json_line


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument(
        "--checkpoint",
        type=Path,
        help="default: a seeded random one whose objects stay present (as benchmark_video's)",
    )
    p.add_argument("--model", default="base_plus")
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--objects", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")

    import numpy as np
    import torch

    from sam2_triton.bench.video import make_frames, track_in_process
    from sam2_triton.models import get_model_size
    from sam2_triton.sessions.runtime import torch_device
    from sam2_triton.sessions.video import VideoLimits, VideoSessionEngine, build_video_predictor

    device = torch_device("GPU", 0)
    if args.checkpoint is None:
        from sam2_triton.testing import save_random_checkpoint

        # A large object-score bias: random weights would otherwise often score "no object"
        # and answer empty masks, which would agree whatever the weights' dtype.
        args.checkpoint = save_random_checkpoint(
            args.model, Path(tempfile.mkdtemp()) / "random.pt", object_score_bias=20.0
        )
    height, width = 540, 960
    frames = make_frames(args.frames, height, width)
    track = functools.partial(
        track_in_process, frames=frames, height=height, width=width, frames_per_request=8
    )
    limits = VideoLimits(max_frames=max(VideoLimits.max_frames, args.frames))
    engines, weights_mib = {}, {}
    for name, precision in (("float32_weights", "float32"), ("bfloat16_weights", "bfloat16")):
        before = torch.cuda.memory_allocated(device)
        predictor = build_video_predictor(
            get_model_size(args.model), args.checkpoint, device, precision=precision
        )
        weights_mib[name] = round((torch.cuda.memory_allocated(device) - before) / 2**20)
        engines[name] = VideoSessionEngine(predictor, device, limits, precision="bfloat16")
        engines[name].warm()
    masks: dict[str, list] = {name: [] for name in engines}
    fps: dict[str, list] = {name: [] for name in engines}
    for repeat in range(args.repeats):
        for name, engine in engines.items():
            run = track(engine, args.objects, masks[name] if repeat == 0 else None)
            fps[name].append(round(run["frames"] / run["propagate"], 2))
    a, b = (np.stack(masks[name]) for name in engines)
    row = {
        "model": args.model,
        "frames": args.frames,
        "objects": args.objects,
        "weights_mib": weights_mib,
        "propagate_fps_runs": fps,
        "propagate_fps_median": {k: sorted(v)[len(v) // 2] for k, v in fps.items()},
        "mask_pixels_differing": int((a != b).sum()),
        "mask_pixels": int(a.size),
        "mask_pixels_set": int(a.sum()),
    }
    append_json_line(row, args.out)
    print(json.dumps(row))


if __name__ == "__main__":
    main()
