#!/usr/bin/env python3
"""One session engine's networks and clicks in process, for one runtime variant.

Loads :class:`~sam2_triton.sessions.image.ImageSessionEngine` as a ``sam2_session`` GPU
instance would (warm-up included, timed), on ONNX Runtime (``--runtime onnxruntime``: the
repository's graphs, the encoder's fused one) or on the PyTorch modules
(``--runtime pytorch``, ``--torch-compile MODE``), then times: the networks alone (encoder
batch 1 and 8, decoder batch 1, 16 and 64 with two points), a session's start from a
1920x1080 JPEG, one click (run lengths; full masks), a batch of 16 sessions' clicks, and
the stages of a click (the engine's stage clock). Writes one JSON line to ``--out`` and the
low-res logits of fixed clicks on a photo to ``--out``'s ``.npz`` twin, which ``--compare``
sets side by side (the answers of two variants).

    python scripts/gpu/session_runtimes.py --repository R --checkpoint C --runtime pytorch \
        --torch-compile default --out OUT/pytorch_default.jsonl
    python scripts/gpu/session_runtimes.py --compare OUT/onnxruntime.npz OUT/pytorch_default.npz
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import numpy as np


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
    args = p.parse_args()
    if args.compare:
        compare(*args.compare)
        return

    import torch
    from PIL import Image
    from skimage import data

    from sam2_triton.bench.profile import device_used_gib, graph_paths, time_call
    from sam2_triton.bench.sessions import clicks, photo_jpeg
    from sam2_triton.export import ENCODER_OUTPUTS, TENSOR_SHAPES
    from sam2_triton.model_config import SessionServing
    from sam2_triton.sessions.image import (
        ImageSessionEngine,
        SessionLimits,
        SessionRequest,
        decoder_shapes,
    )
    from sam2_triton.sessions.runtime import StageClock, bucket_sizes
    from sam2_triton.sessions.torch_networks import TorchNetworks

    device = torch.device(args.device)
    cuda = device.type == "cuda"

    def used_gib():
        return device_used_gib() if cuda else None

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
    paths = graph_paths(args.repository, device)
    t0 = time.perf_counter()
    engine = ImageSessionEngine(
        paths["encoder"],
        paths["decoder"],
        device,
        SessionLimits(max_sessions=64),
        decode_buckets=bucket_sizes(SessionServing.max_batch_size),
        torch_networks=networks,
    )
    row["load_s"] = round(time.perf_counter() - t0, 1)
    row["warm_s"] = round(engine.warm(), 1)
    row["providers"] = engine.decoder.providers
    row["graphs_error"] = getattr(engine.decoder, "error", None)
    row["compile_error"] = getattr(engine, "compile_error", None)
    row["loaded_gib"] = used_gib()
    print(json.dumps(row), flush=True)

    def timed(call, iterations=args.iterations, warmup=3):
        stats = time_call(call, device, iterations, warmup, 1.0)
        return round(stats["p50_ms"], 3)

    # The networks alone.
    for batch in (int(b) for b in args.encoder_batches.split(",")):
        image = torch.randn((batch, 3, 1024, 1024), device=device)
        shapes = {n: (batch, *TENSOR_SHAPES[n]) for n in ENCODER_OUTPUTS}
        ms = timed(lambda image=image, shapes=shapes: engine.encoder.run({"image": image}, shapes))
        row[f"encoder_b{batch}_ms"] = ms
        row[f"encoder_b{batch}_img_s"] = round(batch / ms * 1e3, 1)
    inputs, outputs = decoder_shapes(2)
    for batch in (int(b) for b in args.decoder_batches.split(",")):
        feed = {n: torch.randn((batch, *s), device=device) for n, s in inputs.items()}
        feed["point_labels"] = torch.ones((batch, 2), device=device)
        feed["has_mask_input"] = torch.zeros((batch, 1), device=device)
        out = {n: (batch, *s) for n, s in outputs.items() if not n.startswith("multimask")}
        ms = timed(lambda feed=feed, out=out: engine.decoder.run(feed, out))
        row[f"decoder_b{batch}_ms"] = ms
        row[f"decoder_b{batch}_masks_s"] = round(batch / ms * 1e3, 1)
    row["after_networks_gib"] = used_gib()
    print(json.dumps(row), flush=True)

    # Sessions: a start, clicks, a batch of 16 sessions' clicks.
    jpeg = photo_jpeg()
    ids = iter(range(10**9))

    def start():
        request = SessionRequest(next(ids), start=True, end=True, image_bytes=jpeg)
        (answer,) = engine.execute([request])
        assert not isinstance(answer, Exception), answer

    row["start_1080p_ms"] = timed(start, min(30, args.iterations))
    session = next(ids)
    engine.execute([SessionRequest(session, start=True, image_bytes=jpeg)])
    prompts = clicks((1080, 1920))
    for outputs_wanted in (("mask_rle",), ("masks",)):
        requests = [
            SessionRequest(
                session,
                points=c["point_coords"],
                labels=c["point_labels"],
                outputs=frozenset(outputs_wanted),
            )
            for c in prompts
        ]
        counter = iter(range(10**9))

        def click(requests=requests, counter=counter):
            (answer,) = engine.execute([requests[next(counter) % len(requests)]])
            assert not isinstance(answer, Exception), answer

        row[f"click_{outputs_wanted[0]}_ms"] = timed(click, 4 * args.iterations, 10)
    keys = [next(ids) for _ in range(16)]
    engine.execute([SessionRequest(k, start=True, image_bytes=jpeg) for k in keys])
    batches = [
        [
            SessionRequest(
                k,
                points=prompts[(i + j) % len(prompts)]["point_coords"],
                labels=prompts[(i + j) % len(prompts)]["point_labels"],
                outputs=frozenset({"mask_rle"}),
            )
            for j, k in enumerate(keys)
        ]
        for i in range(len(prompts))
    ]
    counter16 = iter(range(10**9))
    ms = timed(lambda: engine.execute(batches[next(counter16) % len(batches)]), args.iterations, 5)
    row["clicks_16_sessions_ms"] = ms
    row["clicks_16_sessions_masks_s"] = round(16 / ms * 1e3, 1)
    engine.clock = StageClock(device)
    for i in range(2 * args.iterations):
        click_request = SessionRequest(
            session,
            points=prompts[i % len(prompts)]["point_coords"],
            labels=prompts[i % len(prompts)]["point_labels"],
            outputs=frozenset({"mask_rle"}),
        )
        engine.execute([click_request])
    row["click_stages_ms"] = engine.clock.mean_ms(2 * args.iterations)
    engine.clock = None
    row["after_sessions_gib"] = used_gib()

    # Answers to compare across variants: a photo, fixed clicks, their best low-res logits.
    photo = data.astronaut()
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, "PNG")
    key = next(ids)
    engine.execute([SessionRequest(key, start=True, image_bytes=buffer.getvalue())])
    logits = {}
    for i, c in enumerate(clicks(photo.shape[:2], 4)):
        request = SessionRequest(
            key, points=c["point_coords"], labels=c["point_labels"], multimask=True
        )
        (answer,) = engine.execute([request])
        logits[f"click{i}"] = answer.low_res_masks
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out.with_suffix(".npz"), **logits)
    with open(args.out, "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
