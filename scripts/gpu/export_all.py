#!/usr/bin/env python3
"""Export the ONNX files the GPU benchmark measures (run on the GPU machine, CPU work).

For each size: a seeded random-init checkpoint (speed does not depend on the weights),
then through the user-facing CLI ``scripts/export_onnx.py`` the FP32 and FP16 graphs, and
for ``--before`` sizes also the graphs as traced, without the shape folding and constant
position embedding (``export_*(optimize=False)``), in FP32 and FP16: the "before" of the
Memcpy count and timing comparison. Sizes run in parallel processes.

    python scripts/gpu/export_all.py --out /tmp/gpu --sizes base_plus,tiny,large --precisions fp16
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODELS = ("encoder", "decoder")


def run(cmd: list[str], log, env: dict[str, str]) -> None:
    t0 = time.time()
    print("$", " ".join(cmd), file=log, flush=True)
    subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, env=env)
    print(f"  ({time.time() - t0:.0f} s)", file=log, flush=True)


BEFORE = """
import sys
from pathlib import Path
from sam2_triton import export, optimize
from sam2_triton.models import get_model_size
size, ckpt, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
model = export.load_sam2(get_model_size(size), ckpt)
for name, fn in (("encoder", export.export_encoder), ("decoder", export.export_decoder)):
    fp32 = fn(model, out / "before_fp32" / f"sam2_{name}" / "1" / "model.onnx", optimize=False)
    import onnx
    fp16 = optimize.to_fp16(onnx.load(str(fp32)))
    optimize.save_model(fp16, out / "before_fp16" / f"sam2_{name}" / "1" / "model.onnx")
"""


def export_size(
    size: str, out: Path, before: bool, threads: int, precisions: tuple[str, ...]
) -> str:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    out_size = out / size
    out_size.mkdir(parents=True, exist_ok=True)
    ckpt = out / "ckpt" / f"{size}.pt"
    with open(out / f"export_{size}.log", "a") as log:
        if not ckpt.is_file():
            run(
                [
                    sys.executable,
                    str(ROOT / "scripts/make_random_checkpoint.py"),
                    "--model",
                    size,
                    "--out",
                    str(ckpt),
                ],
                log,
                env,
            )
        for precision in precisions:
            have = [(out_size / precision / f"sam2_{m}/1/model.onnx").is_file() for m in MODELS]
            if all(have):
                continue  # done by an earlier run
            only = ["--only", "decoder"] if have[0] else []
            run(
                [
                    sys.executable,
                    str(ROOT / "scripts/export_onnx.py"),
                    "--model",
                    size,
                    "--checkpoint",
                    str(ckpt),
                    "--repository",
                    str(out_size / precision),
                    "--precision",
                    precision,
                    "--no-configs",
                    *only,
                ],
                log,
                env,
            )
        done_before = all(
            (out_size / "before_fp16" / f"sam2_{m}/1/model.onnx").is_file() for m in MODELS
        )
        if before and not done_before:
            run([sys.executable, "-c", BEFORE, size, str(ckpt), str(out_size)], log, env)
    (out / f"{size}.done").write_text("ok\n")
    return size


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--sizes", default="tiny,base_plus,large")
    p.add_argument("--before", default="", help="sizes also exported unoptimised")
    p.add_argument("--precisions", default="fp16", help="fp32,fp16 (default fp16)")
    args = p.parse_args()
    sizes = [s for s in args.sizes.split(",") if s]
    before = set(filter(None, args.before.split(",")))
    args.out.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 4) // len(sizes))
    with ThreadPoolExecutor(len(sizes)) as pool:
        precisions = tuple(p for p in args.precisions.split(",") if p)
        futures = [
            pool.submit(export_size, s, args.out, s in before, threads, precisions) for s in sizes
        ]
        failed = 0
        for f in futures:
            try:
                print("exported", f.result(), flush=True)
            except subprocess.CalledProcessError as e:
                failed += 1
                print("FAILED", e, flush=True)
    (args.out / "all.done").write_text(f"failed={failed}\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
