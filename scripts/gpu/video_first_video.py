"""Why a compiled sam2_video instance's first video ran at half speed (docs/benchmarks.md):
the engine built and warmed up as model.py does, then videos one after another, each
request's milliseconds beside what torch.compile did during it (dynamo's compilations,
CUDA graph recordings and warm-up runs of cudagraph trees, counted from their debug log).

    python3 scripts/gpu/video_first_video.py --out results.json [--torch-compile MODE]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

from sam2_triton.bench.video import _random_checkpoint, make_frames, object_clicks
from sam2_triton.models import get_model_size
from sam2_triton.sessions.video import (
    VideoLimits,
    VideoRequest,
    VideoSessionEngine,
    build_video_predictor,
)


class EventCounter(logging.Handler):
    """Counts log records by their message template's first words."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.counts: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[" ".join(str(record.msg).split()[1:3])] += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="base_plus")
    parser.add_argument("--torch-compile", help="default reduce-overhead (CPU: none)")
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--videos", type=int, default=3)
    parser.add_argument(
        "--first-frames", type=int, default=0, help="a short video first (the benchmark's: 4)"
    )
    parser.add_argument("--device", default="cuda", help="cpu: a smoke run (float32)")
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")  # Meta's propagation draws a bar per call
    counter = EventCounter()
    for name in ("torch._inductor.cudagraph_trees", "torch._dynamo.convert_frame"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.DEBUG)
        logger.addHandler(counter)
    device = torch.device(args.device)
    mode = args.torch_compile or ("reduce-overhead" if device.type == "cuda" else "none")
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = _random_checkpoint(args.model, Path(tmp))
        precision = "bfloat16" if device.type == "cuda" else "float32"
        predictor = build_video_predictor(
            get_model_size(args.model),
            checkpoint,
            device,
            torch_compile=mode,
            image_size=args.image_size,
            precision=precision,
        )
    limits = VideoLimits(  # the benchmark's client: 8 frames per request and per response
        max_frames=max(VideoLimits.max_frames, args.frames), max_frames_per_response=8
    )
    engine = VideoSessionEngine(predictor, device, limits, precision=precision)
    report: dict = {"warm_seconds": round(engine.warm(), 1), "warm_events": dict(counter.counts)}
    # A compilation given up at the warm-up would time eager runs as if compiled.
    report.update(torch_compile=mode, compiled=engine.compiled, compile_error=engine.compile_error)
    print(report, flush=True)
    all_frames = make_frames(args.frames, 540, 960)
    report["videos"] = []
    lengths = ([args.first_frames] if args.first_frames else []) + [args.frames] * args.videos
    for video, length in enumerate(lengths):
        frames = all_frames[:length]
        (click,) = object_clicks(1, 540, 960)
        requests = [VideoRequest(video, start=True, frames=frames[:8])]
        requests += [
            VideoRequest(video, frames=frames[i : i + 8]) for i in range(8, len(frames), 8)
        ]
        requests.append(VideoRequest(video, frame_index=0, object_id=1, points=[click], labels=[1]))
        requests.append(VideoRequest(video, propagate=True))
        rows: list[dict] = []
        while requests:
            request = requests.pop(0)
            counter.counts.clear()
            t0 = time.perf_counter()
            (answer,) = engine.execute([request])
            if isinstance(answer, Exception):
                raise answer
            ms = round((time.perf_counter() - t0) * 1e3, 1)
            kind = "propagate" if request.propagate else "click" if request.points else "frames"
            kind = "end" if request.end else kind
            rows.append({"request": kind, "ms": ms, "events": dict(counter.counts)})
            print(video, rows[-1], flush=True)
            if request.propagate:
                last = int(answer.frame_indices[-1])
                follow = dict(propagate=True, start_frame=last + 1)
                more = last + 1 < len(frames)
                requests.append(
                    VideoRequest(video, **follow) if more else VideoRequest(video, end=True)
                )
        report["videos"].append(rows)
    engine.close()
    args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
