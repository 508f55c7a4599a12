"""``perf_analyzer_inputs``: input data for NVIDIA's perf_analyzer, from a real image.

perf_analyzer (in the NGC ``tritonserver:<yy.mm>-py3-sdk`` image; it is not on PyPI) reads
``--input-data DIR``: one file per input, named after it, holding the raw little-endian
bytes of one request's tensor without the batch dimension (with it, for a model Triton does
not batch). Dynamic dims are given with ``--shape``. This writes such folders for
``sam2_encoder``, ``sam2_decoder``, ``sam2_decoder_prompts`` (``PROMPT_SETS`` clicks on the
image in one request) and ``sam2`` from one image, using the client's own preprocessing, so
perf_analyzer sends realistic data (a real image's embeddings for the decoder), and prints
the commands.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sam2_triton.models import UserError

DEFAULT_POINTS = ((0.5, 0.45), (0.3, 0.6))
#: Prompt sets in the ``sam2_decoder_prompts`` request: the default click moved across the image.
PROMPT_SETS = 8


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="perf_analyzer_inputs.py", description=__doc__.split("\n")[0])
    p.add_argument("--image", type=Path, help="image to use (default: a scikit-image photo)")
    p.add_argument("--out", type=Path, default=Path("perf_inputs"), help="default %(default)s")
    p.add_argument(
        "--url",
        default="localhost:8000",
        help="running server whose encoder makes the decoder's embeddings (HTTP)",
    )
    return p


def commands(out: Path, num_points: int) -> list[str]:
    """perf_analyzer command lines for the folders in ``out`` (gRPC on localhost:8001)."""
    common = "perf_analyzer -i grpc -u localhost:8001 --measurement-interval 10000"
    shapes = f"--shape point_coords:{num_points},2 --shape point_labels:{num_points}"
    return [
        f"{common} -m sam2_encoder --input-data {out}/sam2_encoder --concurrency-range 1:8",
        f"{common} -m sam2_decoder --input-data {out}/sam2_decoder {shapes} "
        "--concurrency-range 1:64:4",
        f"{common} -m sam2_decoder --input-data {out}/sam2_decoder {shapes} "
        "--concurrency-range 16 --shared-memory system",
        f"{common} -m sam2_decoder_prompts --input-data {out}/sam2_decoder_prompts "
        f"--shape point_coords:{PROMPT_SETS},{num_points},2 "
        f"--shape point_labels:{PROMPT_SETS},{num_points} "
        f"--shape mask_input:{PROMPT_SETS},1,256,256 --shape has_mask_input:{PROMPT_SETS},1 "
        "--concurrency-range 1:8",
        f"{common} -m sam2 --input-data {out}/sam2 {shapes} --concurrency-range 1:8",
    ]


def write_inputs(folder: Path, tensors: dict[str, np.ndarray], batched: bool = True) -> None:
    """One raw float32 file per input; for a ``batched`` model the batch dimension (of 1) is
    dropped: perf_analyzer adds it."""
    from sam2_triton.files import write_bytes_atomic

    folder.mkdir(parents=True, exist_ok=True)
    for name, value in tensors.items():
        if batched:
            if value.shape[0] != 1:
                raise ValueError(f"{name}: expected a batch of 1, got {value.shape}")
            value = value[0]
        write_bytes_atomic(folder / name, np.ascontiguousarray(value, "<f4").tobytes())


def main(argv: Sequence[str] | None = None) -> int:
    from sam2_triton.client import Sam2Client, Sam2Transforms, load_image
    from sam2_triton.export import ENCODER_OUTPUTS

    args = build_parser().parse_args(argv)
    if args.image:
        image = load_image(args.image)
    else:
        try:
            from sam2_triton.testing import photos
        except ImportError:  # pragma: no cover - scikit-image comes with the dev extra
            raise UserError("pass --image (scikit-image's photos are not installed)") from None
        image = photos()["astronaut"]
    h, w = image.shape[:2]
    transforms = Sam2Transforms()
    points = np.array([[x * w, y * h] for x, y in DEFAULT_POINTS], np.float32)
    prompts = _prompts(transforms, [points], (h, w))
    shifts = np.linspace(-0.3, 0.3, PROMPT_SETS)[:, None, None] * [w, h]
    prompt_sets = _prompts(transforms, np.clip(points + shifts, 0, [w, h]), (h, w))
    pixels = transforms.preprocess(image)
    with Sam2Client(args.url, "http", cache_size=0) as client:
        client.check_ready()
        embedding = client.encode_image(image)
        features = embedding.numpy()
    write_inputs(args.out / "sam2_encoder", {"image": pixels})
    write_inputs(
        args.out / "sam2_decoder", {**{n: features[n] for n in ENCODER_OUTPUTS}, **prompts}
    )
    write_inputs(
        args.out / "sam2_decoder_prompts",
        {**{n: features[n] for n in ENCODER_OUTPUTS}, **prompt_sets},
        batched=False,
    )
    write_inputs(args.out / "sam2", {"image": pixels, **prompts})
    names = ("sam2_encoder", "sam2_decoder", "sam2_decoder_prompts", "sam2")
    print("wrote " + ", ".join(f"{args.out}/{n}" for n in names))
    print("run (in the NGC tritonserver:<yy.mm>-py3-sdk image, next to the server):")
    for line in commands(args.out, prompts["point_coords"].shape[1]):
        print("  " + line)
    return 0


def _prompts(transforms, point_sets, hw) -> dict[str, np.ndarray]:
    """Decoder prompt inputs ``[K, ...]`` for K sets of clicks (first foreground, then
    background), in original-image pixels."""
    rows = [transforms.prompt_tensors(p, np.array([1, 0]), None, hw) for p in point_sets]
    k = len(rows)
    return {
        "point_coords": np.concatenate([c for c, _ in rows]),
        "point_labels": np.concatenate([lab for _, lab in rows]),
        "mask_input": np.zeros((k, 1, 256, 256), np.float32),
        "has_mask_input": np.zeros((k, 1), np.float32),
    }


def cli() -> None:
    from sam2_triton.cli import run_cli

    run_cli(main)


if __name__ == "__main__":
    cli()
