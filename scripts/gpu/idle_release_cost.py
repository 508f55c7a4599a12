#!/usr/bin/env python3
"""What the first clicks cost after an idle instance gave a burst's cached memory back.

Loads the session engine as a GPU ``sam2_session`` instance would (the PyTorch networks,
eager with CUDA graphs unless ``--torch-compile``), opens 16 sessions on a 1920x1080 JPEG,
then ``--cycles`` times, alternately with and without the release: a burst of 16 sessions'
clicks with full masks (which grows torch's cache), ``--idle`` seconds without work, the
release or not (``engine.idle_release.poll()``, as the instance's thread calls it), and the
first three clicks after it (one session, run lengths), each ended by a synchronisation.
The cycles without the release tell the idle GPU's own slowness (clocks) from the release's.
Prints one JSON line (and writes it to ``--out``).

    python scripts/gpu/idle_release_cost.py --checkpoint C --out OUT/idle_release.jsonl
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--model", default="base_plus")
    p.add_argument("--torch-compile", default="none")
    p.add_argument("--idle", type=float, default=5.0, help="seconds without work (default 5)")
    p.add_argument("--cycles", type=int, default=6, help="half of them with the release")
    p.add_argument("--device", default="cuda", help="cpu: a smoke test (no release there)")
    p.add_argument("--out", type=Path)
    args = p.parse_args()

    import torch

    from sam2_triton.bench import sessions as bs
    from sam2_triton.sessions.image import SessionLimits
    from sam2_triton.sessions.torch_networks import TorchNetworks

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    networks = TorchNetworks(args.model, args.checkpoint, "fp16", args.torch_compile)
    limits = SessionLimits(memory_release_idle_s=args.idle)
    engine = bs.instance_engine(device, networks=networks, limits=limits)
    engine.warm()
    sessions = bs.InProcessSessions(None, args.device, engine=engine)
    jpeg, prompts = bs.photo_jpeg(), bs.clicks((1080, 1920))
    click = sessions.decode(jpeg, prompts, bs.RLE_OUTPUTS)(0)
    burst = sessions.decode_batch(jpeg, prompts, bs.FULL_OUTPUTS, 16)(0)

    def timed_click(i: int) -> float:
        t0 = time.perf_counter()
        click(i)
        if cuda:
            torch.cuda.synchronize(device)
        return (time.perf_counter() - t0) * 1e3

    def reserved_mib() -> float | None:
        return round(torch.cuda.memory_reserved(device) / 2**20) if cuda else None

    steady = [timed_click(i) for i in range(30)][10:]
    row: dict = {
        "model": args.model,
        "torch_compile": args.torch_compile,
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "torch": torch.__version__,
        "idle_s": args.idle,
        "click_steady_ms": round(statistics.median(steady), 3),
        "cycles": [],
    }
    for cycle in range(args.cycles):
        release = cycle % 2 == 0
        for i in range(4):
            burst(i)
        if cuda:
            torch.cuda.synchronize(device)
        before = reserved_mib()
        time.sleep(args.idle + 0.1)
        released = engine.idle_release.poll() if release and engine.idle_release else None
        after = reserved_mib()
        first = [round(timed_click(i), 3) for i in range(3)]
        row["cycles"].append(
            {
                "release": release,
                "released_mib": None if released is None else round(released / 2**20),
                "reserved_mib": [before, after, reserved_mib()],
                "first_clicks_ms": first,
            }
        )
    line = json.dumps(row)
    print(line, flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(line + "\n")


if __name__ == "__main__":
    main()
