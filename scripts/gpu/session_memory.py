#!/usr/bin/env python3
"""GPU memory of one session engine (a ``sam2_session`` instance) through a burst of starts.

Loads :class:`~sam2_triton.sessions.image.ImageSessionEngine` on the repository's graphs,
then encodes single images, a burst of batches of ``--burst`` images, one single image (the
run that gives a burst's memory back) and single images again, printing the device memory
in use (the whole process, as ``nvidia-smi`` counts it) and the median encode time at each
step. ``--shrink-above N`` is the engine's ``shrink_encoder_arena_above`` (``none``: the
arena keeps its peak). Run it once per value, each in a fresh process, so that the figures
do not mix.

    python scripts/gpu/session_memory.py --repository REPO --shrink-above none
"""

from __future__ import annotations

import argparse
import json

import torch

from sam2_triton.bench.profile import device_used_gib, graph_paths, time_call
from sam2_triton.sessions.image import ImageSessionEngine


def timed(engine, images, runs: int) -> float:
    """Median ms of ``runs`` encodes of ``images`` (no warm-up: the first may be the point)."""
    device = engine.device
    return round(time_call(lambda: engine.encode(images), device, runs, 0, 0.0)["p50_ms"], 2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repository", required=True)
    p.add_argument("--shrink-above", default="1", help="an integer, or none")
    p.add_argument("--burst", type=int, default=8)
    args = p.parse_args()
    device = torch.device("cuda")
    shrink = None if args.shrink_above == "none" else int(args.shrink_above)
    paths = graph_paths(args.repository, device)
    row: dict = {"shrink_encoder_arena_above": shrink, "before_gib": device_used_gib()}
    engine = ImageSessionEngine(
        paths["encoder"], paths["decoder"], device, shrink_encoder_arena_above=shrink
    )
    row["loaded_gib"] = device_used_gib()
    image = torch.randint(0, 256, (3, 1080, 1920), dtype=torch.uint8, device=device)
    row["encode_1_ms"] = timed(engine, [image], 10)
    row["after_single_gib"] = device_used_gib()
    row[f"encode_{args.burst}_ms"] = timed(engine, [image] * args.burst, 5)
    row["after_burst_gib"] = device_used_gib()
    row["first_single_after_burst_ms"] = timed(engine, [image], 1)  # where a shrink runs
    row["after_first_single_gib"] = device_used_gib()
    row["encode_1_again_ms"] = timed(engine, [image], 10)
    row["after_single_again_gib"] = device_used_gib()
    # The switches again: what each change of batch size costs once plans exist for both.
    row[f"second_burst_first_{args.burst}_ms"] = timed(engine, [image] * args.burst, 1)
    row["second_first_single_ms"] = timed(engine, [image], 1)
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
