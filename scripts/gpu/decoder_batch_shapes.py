#!/usr/bin/env python3
"""Decoder runs whose batch size changes from run to run, as a sessions server's do.

ONNX Runtime's CUDA convolutions build their cuDNN plan again when their input shape changes.
This times, on one device: the plain session (as sam2_session ran before) at a fixed batch
size and at batch sizes drawn at random from 2..16 (one and two points alternating), then
the same random sizes through BucketedOrtSession (each size padded to 2, 4, 8 or 16, a
session per bucket), without and with a CUDA graph per bucket. Prints median ms per run
and clicks per second.

    python scripts/gpu/decoder_batch_shapes.py --decoder REPO/sam2_decoder/1/model.onnx
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from sam2_triton.export import TENSOR_SHAPES
from sam2_triton.sessions.image import decoder_shapes
from sam2_triton.sessions.runtime import (
    BucketedOrtSession,
    CudaGraphOrtSession,
    TorchOrtSession,
    bucket_sizes,
)


def feed(k: int, points: int, device) -> dict[str, torch.Tensor]:
    shapes = {n: (k, *s) for n, s in decoder_shapes(points)[0].items()}
    out = {n: torch.randn(s, device=device) for n, s in shapes.items()}
    out["point_labels"] = torch.ones(shapes["point_labels"], device=device)
    out["has_mask_input"] = torch.zeros(shapes["has_mask_input"], device=device)
    return out


def timed(session, feeds) -> list[float]:
    times = []
    for f in feeds:
        k = next(iter(f.values())).shape[0]
        start = time.perf_counter()
        session.run(f, {n: (k, *TENSOR_SHAPES[n]) for n in ("masks", "iou_predictions")})
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--decoder", required=True)
    p.add_argument("--runs", type=int, default=200)
    args = p.parse_args()
    device = torch.device("cuda")
    rng = np.random.default_rng(0)
    sizes = rng.integers(2, 17, args.runs).tolist()
    mixed = [feed(k, 1 + i % 2, device) for i, k in enumerate(sizes)]
    fixed = [feed(9, 1 + i % 2, device) for i in range(args.runs)]
    plain = TorchOrtSession(args.decoder, device)
    bucketed = BucketedOrtSession(
        args.decoder, device, plain, bucket_sizes(16), warm=decoder_shapes()
    )
    single = CudaGraphOrtSession(args.decoder, device)
    graphed = BucketedOrtSession(
        args.decoder, device, single, bucket_sizes(16), warm=decoder_shapes(), graphs=True
    )
    rows = []
    for name, session, feeds in (
        ("plain, batch 9 every run", plain, fixed),
        ("plain, batch 2-16 at random", plain, mixed),
        ("bucketed, batch 2-16 at random", bucketed, mixed),
        ("bucketed with CUDA graphs, batch 2-16 at random", graphed, mixed),
    ):
        timed(session, feeds[:20])  # warm-up
        times = timed(session, feeds)
        clicks = sum(next(iter(f.values())).shape[0] for f in feeds)
        rows.append((name, 1e3 * statistics.median(times), clicks / sum(times)))
    print("| decoder runs | median ms per run | clicks/s |\n|---|---|---|")
    for name, ms, rate in rows:
        print(f"| {name} | {ms:.2f} | {rate:,.0f} |")


if __name__ == "__main__":
    main()
