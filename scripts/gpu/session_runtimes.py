#!/usr/bin/env python3
"""One session engine's networks and clicks in process, for one runtime variant.

Loads :class:`~sam2_triton.sessions.image.ImageSessionEngine` as a ``sam2_session`` GPU
instance would (warm-up included, timed), on ONNX Runtime (``--runtime onnxruntime``: the
repository's graphs, the encoder's fused one) or on the PyTorch modules
(``--runtime pytorch``, ``--torch-compile MODE``), then times: the networks alone (encoder
batch 1 and 8, decoder batch 1, 16 and 64 with two points), a session's start from a
1920x1080 JPEG, one click (run lengths; full masks), a batch of 16 sessions' clicks (of one
and two points; of one to eight points), and
the stages of a click (the benchmark's in-process cases,
:class:`~sam2_triton.bench.sessions.InProcessSessions`, on this engine). Writes one JSON
line to ``--out`` and the low-res logits of fixed clicks on a photo to ``--out``'s
``.npz`` twin, which ``--compare`` sets side by side (the answers of two variants).

    python scripts/gpu/session_runtimes.py --repository R --checkpoint C --runtime pytorch \
        --torch-compile default --out OUT/pytorch_default.jsonl
    python scripts/gpu/session_runtimes.py --compare OUT/onnxruntime.npz OUT/pytorch_default.npz
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import time
from pathlib import Path

import numpy as np

from sam2_triton.bench.report import append_json_line


def compare(a: str, b: str) -> None:
    x, y = np.load(a), np.load(b)
    for key in x.files:
        la, lb = x[key], y[key]
        masks_a, masks_b = la > 0, lb > 0
        union = (masks_a | masks_b).sum()
        iou = float((masks_a & masks_b).sum() / union) if union else 1.0
        print(
            json.dumps(
                {
                    "pair": [Path(a).stem, Path(b).stem],
                    "prompt": key,
                    "max_abs_logit_diff": round(float(np.abs(la - lb).max()), 4),
                    "logit_spread": round(float(la.std()), 4),
                    "mask_iou": round(iou, 5),
                }
            )
        )


def spread_clicks(hw: tuple[int, int], most: int = 8) -> list[dict[str, np.ndarray]]:
    """Prompts of 1, 2, ... ``most`` points (foreground and background alternately) spread
    over an image of ``hw``: users who have clicked that many times."""
    h, w = hw
    rng = np.random.default_rng(1)
    return [
        {
            "point_coords": rng.uniform([0.1 * w, 0.1 * h], [0.9 * w, 0.9 * h], (n, 2)).astype(
                np.float32
            ),
            "point_labels": (np.arange(n) % 2 == 0).astype(np.int32),
        }
        for n in range(1, most + 1)
    ]


def profile_table(call, device, calls: int) -> str:
    """torch.profiler's table of ``calls`` calls of ``call(i)`` (after two untimed ones):
    the operators and kernels by their device time, then by their host time."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    call(0), call(1)
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
        torch.cuda.synchronize(device)
    with profile(activities=activities) as prof:
        for i in range(calls):
            call(i)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    averages = prof.key_averages()
    by_device = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return "\n\n".join(
        averages.table(sort_by=key, row_limit=40, max_name_column_width=70)
        for key in (by_device, "cpu_time_total")
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repository", type=Path)
    p.add_argument("--checkpoint", type=Path)
    p.add_argument("--model", default="base_plus")
    p.add_argument("--runtime", choices=("onnxruntime", "pytorch"), default="onnxruntime")
    p.add_argument("--torch-compile", default="none")
    p.add_argument("--precision", default="fp16")
    p.add_argument("--iterations", type=int, default=50)
    p.add_argument("--device", default="cuda", help="cpu: a smoke test of this script")
    p.add_argument("--encoder-batches", default="1,8")
    p.add_argument("--decoder-batches", default="1,16,64")
    p.add_argument("--out", type=Path)
    p.add_argument("--compare", nargs=2, metavar="NPZ")
    p.add_argument(
        "--trace",
        action="store_true",
        help="also write torch.profiler's tables of the encoder and the decoder at batch 1, "
        "a click and 16 sessions' clicks",
    )
    args = p.parse_args()
    if args.compare:
        compare(*args.compare)
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)

    import torch
    from PIL import Image
    from skimage import data

    from sam2_triton.bench.profile import (
        device_used_gib,
        model_feeds,
        time_call,
        torch_memory_mib,
    )
    from sam2_triton.bench.sessions import (
        DECODE_OUTPUTS,
        RLE_OUTPUTS,
        InProcessSessions,
        clicks,
        instance_engine,
        photo_jpeg,
    )
    from sam2_triton.sessions.image import SessionRequest
    from sam2_triton.sessions.torch_networks import TorchNetworks

    device = torch.device(args.device)
    cuda = device.type == "cuda"

    def used_gib():
        return device_used_gib() if cuda else None

    def torch_memory():
        return torch_memory_mib(device) if cuda else None

    row: dict = {
        "runtime": args.runtime,
        "torch_compile": args.torch_compile if args.runtime == "pytorch" else None,
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "torch": torch.__version__,
        "before_gib": used_gib(),
    }
    networks = None
    if args.runtime == "pytorch":
        networks = TorchNetworks(args.model, args.checkpoint, args.precision, args.torch_compile)
    t0 = time.perf_counter()
    engine = instance_engine(device, args.repository, networks)
    row["load_s"] = round(time.perf_counter() - t0, 1)
    row["torch_mib_before_warm"] = torch_memory()  # the weights, the engine's constants
    row["warm_s"] = round(engine.warm(), 1)
    row["torch_mib_loaded"] = torch_memory()  # + the graphs' pools and input buffers
    row["providers"] = engine.decoder.providers
    row["graphs_error"] = getattr(engine.decoder, "error", None)
    row["compile_error"] = getattr(engine, "compile_error", None)
    row["loaded_gib"] = used_gib()
    print(json.dumps(row), flush=True)

    def timed(call, iterations=args.iterations, warmup=3):
        stats = time_call(call, device, iterations, warmup, 1.0)
        return round(stats["p50_ms"], 3)

    def indexed(call):
        """``call(i)`` (a benchmark case's call) as ``call()``, ``i`` counting up."""
        count = itertools.count()
        return lambda: call(next(count))

    # The networks alone, on the profile's feeds (the decoder's: two points).
    for model, batches, unit in (
        ("encoder", args.encoder_batches, "img_s"),
        ("decoder", args.decoder_batches, "masks_s"),
    ):
        network = getattr(engine, model)
        for batch in (int(b) for b in batches.split(",")):
            feed, shapes = model_feeds(model, batch, device)
            ms = timed(lambda network=network, feed=feed, shapes=shapes: network.run(feed, shapes))
            row[f"{model}_b{batch}_ms"] = ms
            row[f"{model}_b{batch}_{unit}"] = round(batch / ms * 1e3, 1)
            if args.trace and batch == 1:
                table = profile_table(
                    lambda _i, network=network, feed=feed, shapes=shapes: network.run(feed, shapes),
                    device,
                    calls=20,
                )
                args.out.with_name(f"{args.out.stem}_{model}_profile.txt").write_text(table)
    row["after_networks_gib"] = used_gib()
    row["torch_mib_after_networks"] = torch_memory()
    print(json.dumps(row), flush=True)

    # Sessions: the benchmark's in-process cases on this engine (a start, clicks, a batch of
    # 16 sessions' clicks, where a click's time goes).
    sessions = InProcessSessions(args.repository, args.device, engine=engine)
    jpeg = photo_jpeg()
    prompts = clicks((1080, 1920))
    row["start_1080p_ms"] = timed(indexed(sessions.start(jpeg)(0)), min(30, args.iterations))
    for outputs in DECODE_OUTPUTS:
        click = indexed(sessions.decode(jpeg, prompts, outputs)(0))
        row[f"click_{outputs[-1]}_ms"] = timed(click, 4 * args.iterations, 10)
    # How many runs each click's mask has (its mask_rle answer is 4 bytes a run).
    click = sessions.decode(jpeg, prompts, RLE_OUTPUTS)(0)
    row["mask_rle_runs"] = [len(click(i).mask_rle) for i in range(len(prompts))]
    batch = indexed(sessions.decode_batch(jpeg, prompts, RLE_OUTPUTS, 16)(0))
    ms = timed(batch, args.iterations, 5)
    row["clicks_16_sessions_ms"] = ms
    row["clicks_16_sessions_masks_s"] = round(16 / ms * 1e3, 1)
    # Users who have clicked 1 to 8 times: the sessions of a batch hold prompts of 8 counts.
    batch = indexed(sessions.decode_batch(jpeg, spread_clicks((1080, 1920)), RLE_OUTPUTS, 16)(0))
    ms = timed(batch, args.iterations, 5)
    row["clicks_16_sessions_1_to_8_points_ms"] = ms
    row["clicks_16_sessions_1_to_8_points_masks_s"] = round(16 / ms * 1e3, 1)
    make_click = sessions.decode(jpeg, prompts, RLE_OUTPUTS)
    row["click_stages_ms"] = sessions.stage_profile(make_click, 2 * args.iterations)
    make_batch = sessions.decode_batch(jpeg, prompts, RLE_OUTPUTS, 16)
    row["clicks_16_sessions_stages_ms"] = sessions.stage_profile(make_batch, args.iterations)
    if args.trace:
        for name, make in (("click", make_click), ("clicks_16_sessions", make_batch)):
            table = profile_table(make(0), device, calls=20)
            args.out.with_name(f"{args.out.stem}_{name}_profile.txt").write_text(table)
    row["after_sessions_gib"] = used_gib()
    row["torch_mib_after_sessions"] = torch_memory()

    # Answers to compare across variants: a photo, fixed clicks, their best low-res logits.
    photo = data.astronaut()
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, "PNG")
    key = "compared photo"
    engine.execute([SessionRequest(key, start=True, image_bytes=buffer.getvalue())])
    logits = {}
    for i, c in enumerate(clicks(photo.shape[:2], 4)):
        request = SessionRequest(
            key, points=c["point_coords"], labels=c["point_labels"], multimask=True
        )
        (answer,) = engine.execute([request])
        logits[f"click{i}"] = answer.low_res_masks
    np.savez(args.out.with_suffix(".npz"), **logits)
    append_json_line(row, args.out)
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
