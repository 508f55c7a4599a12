"""``export_onnx``: a SAM2.1 checkpoint → ONNX graphs + Triton configs in a model repository."""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from pathlib import Path

from sam2_triton.checksums import parse_sha256
from sam2_triton.models import MODEL_SIZES, UserError, get_model_size

log = logging.getLogger("sam2_triton.export")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="export_onnx.py",
        description="Export SAM2.1's image encoder and prompt encoder + mask decoder to ONNX "
        "inside a Triton model repository (sam2_encoder, sam2_decoder, "
        "sam2_decoder_prompts, sam2 ensemble), and copy the checkpoint for sam2_video "
        "(Meta's video predictor in PyTorch).",
    )
    p.add_argument(
        "--model", required=True, metavar="SIZE", help=f"one of {', '.join(MODEL_SIZES)}"
    )
    p.add_argument(
        "--checkpoint",
        type=Path,
        help="Meta-format SAM2.1 checkpoint (default: checkpoints/<Meta's file name>)",
    )
    p.add_argument(
        "--sha256",
        metavar="HEX",
        help="the SHA-256 the checkpoint must have. Without it, the one SHA256SUMS beside the "
        "checkpoint records (download_checkpoints.py writes it) is checked, if any",
    )
    p.add_argument(
        "--repository",
        type=Path,
        default=Path("model_repository"),
        help="model repository (default: %(default)s)",
    )
    p.add_argument(
        "--only",
        choices=("encoder", "decoder", "video"),
        help="export one graph only, or only copy the weights of sam2_video (default: all)",
    )
    p.add_argument(
        "--precision",
        choices=("fp32", "fp16"),
        default="fp32",
        help="weights and compute of the ONNX graphs (default: %(default)s). fp16 is for "
        "GPUs (ONNX Runtime CUDA EP); inputs and outputs stay FP32, so the Triton contract "
        "is the same",
    )
    p.add_argument(
        "--fuse-attention",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also write sam2_encoder/1/model.cuda.onnx: the encoder with its attention, "
        "LayerNorm and GELU rewritten to ONNX Runtime's fused contrib ops (flash attention on "
        "the CUDA EP), which the embedded server's GPU instances and sam2_session run; "
        "model.onnx keeps standard operators for TensorRT. Default: on with --precision fp16",
    )
    p.add_argument(
        "--no-configs",
        action="store_true",
        help="write the ONNX files only, leave config.pbtxt files as they are",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    size = get_model_size(args.model)
    sha256 = parse_sha256(args.sha256) if args.sha256 is not None else None
    checkpoint = args.checkpoint or Path("checkpoints") / size.checkpoint_file
    if not checkpoint.is_file():
        raise UserError(
            f"checkpoint not found: {checkpoint} (download it with "
            f"scripts/download_checkpoints.py --model {size.name})"
        )

    from sam2_triton import export

    repo = args.repository
    fuse = args.precision == "fp16" if args.fuse_attention is None else args.fuse_attention
    t0 = time.perf_counter()
    model = export.load_sam2(size, checkpoint, sha256=sha256)
    log.info("loaded %s from %s in %.1f s", size.name, checkpoint, time.perf_counter() - t0)
    if args.only in (None, "encoder"):
        t = time.perf_counter()
        path = export.export_encoder(
            model,
            repo / "sam2_encoder" / "1" / "model.onnx",
            precision=args.precision,
            fuse_attention=fuse,
        )
        log.info("wrote %s in %.1f s", path, time.perf_counter() - t)
    if args.only in (None, "decoder"):
        t = time.perf_counter()
        path = export.export_decoder(
            model,
            repo / "sam2_decoder" / "1" / "model.onnx",
            precision=args.precision,
        )
        log.info("wrote %s in %.1f s", path, time.perf_counter() - t)
        copy = export.copy_graph(path, repo / "sam2_decoder_prompts" / "1" / "model.onnx")
        log.info("wrote %s (the same graph, for K prompts on one image)", copy)
    if args.only in (None, "video"):
        from sam2_triton.model_config import VIDEO, VIDEO_WEIGHTS

        path = export.write_video_weights(checkpoint, repo / VIDEO / "1" / VIDEO_WEIGHTS)
        log.info("wrote %s (the weights sam2_video runs in PyTorch)", path)
    path = export.export_prompt_check(repo / "sam2_prompt_check" / "1" / "model.onnx")
    log.info("wrote %s (the sam2 ensemble's prompt check)", path)
    if not args.no_configs:
        from sam2_triton import model_config

        for path in model_config.write_repository_configs(repo, model_size=size.name):
            log.info("wrote %s", path)
    return 0


def cli() -> None:
    from sam2_triton.cli import run_cli

    run_cli(main)


if __name__ == "__main__":
    cli()
