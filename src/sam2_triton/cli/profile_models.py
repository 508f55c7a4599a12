"""``profile_models``: the device's ceilings, the models' FLOPs, timings and ONNX Runtime's
profile for one model size (:mod:`sam2_triton.bench.profile`)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from sam2_triton.models import MODEL_SIZES, UserError


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="profile_models.py",
        description="Profile the exported encoder and decoder of one model size: ceilings "
        "of the device, FLOPs, ONNX Runtime (I/O binding; CUDA graphs for the decoder on a "
        "GPU) and PyTorch eager timings, ONNX Runtime's per-operator profile. Writes "
        "profile.json and profile.md.",
    )
    p.add_argument("--model", required=True, choices=list(MODEL_SIZES))
    p.add_argument("--repository", type=Path, required=True, help="the exported repository")
    p.add_argument("--checkpoint", type=Path, required=True, help="the checkpoint it came from")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--encoder-batches", type=_ints, default=(1, 8, 16))
    p.add_argument("--decoder-batches", type=_ints, default=(1, 64))
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--min-time", type=float, default=1.0, help="seconds per case at least")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch rows")
    p.add_argument(
        "--torch-compile",
        type=lambda text: tuple(m for m in text.split(",") if m),
        default=(),
        metavar="MODES",
        help="also PyTorch through torch.compile in each of these modes (comma-separated, "
        "e.g. reduce-overhead,max-autotune-no-cudagraphs; GPU)",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from sam2_triton.bench import profile as prof
    from sam2_triton.files import write_text_atomic

    args = build_parser().parse_args(argv)
    for name in ("sam2_encoder", "sam2_decoder"):
        if not (args.repository / name / "1" / "model.onnx").is_file():
            raise UserError(f"{args.repository / name}/1/model.onnx is missing (export first)")
    report = prof.profile(
        args.model,
        args.repository,
        args.checkpoint,
        args.device,
        args.encoder_batches,
        args.decoder_batches,
        args.iterations,
        args.min_time,
        not args.no_torch,
        args.torch_compile,
    )
    write_text_atomic(args.out / "profile.json", json.dumps(report, indent=2) + "\n")
    text = prof.markdown(report)
    write_text_atomic(args.out / "profile.md", text)
    print(text)
    return 0


def cli() -> None:
    from sam2_triton.cli import run_cli

    run_cli(main)


if __name__ == "__main__":
    cli()
