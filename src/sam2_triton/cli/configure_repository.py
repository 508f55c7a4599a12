"""``configure_repository``: regenerate the Triton configs of a model repository."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from sam2_triton.models import MODEL_SIZES, UserError


def _sizes(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def build_parser() -> argparse.ArgumentParser:
    from sam2_triton.model_config import RepositoryParams

    d = RepositoryParams()
    p = argparse.ArgumentParser(
        prog="configure_repository.py",
        description="Write config.pbtxt (GPU) and configs/cpu.pbtxt (CPU) for sam2_encoder, "
        "sam2_decoder, sam2_decoder_prompts, sam2_prompt_check and the sam2 ensemble. Flags "
        "change the GPU configs; the CPU configs keep their defaults. The exported ONNX files "
        "are not touched (the weightless sam2_prompt_check graph is written if missing).",
    )
    p.add_argument("--repository", type=Path, default=Path("model_repository"))
    p.add_argument("--model", default=d.model_size, choices=list(MODEL_SIZES))
    p.add_argument("--precision", default=d.precision, choices=("FP16", "FP32"), help="TensorRT")
    p.add_argument("--trt-cache-dir", default=d.trt_cache_dir)
    for name, s in (("encoder", d.encoder), ("decoder", d.decoder)):
        g = p.add_argument_group(name)
        g.add_argument(f"--{name}-max-batch-size", type=int, default=s.max_batch_size)
        g.add_argument(
            f"--{name}-preferred-batch-sizes", type=_sizes, default=s.preferred_batch_sizes
        )
        g.add_argument(f"--{name}-queue-delay-us", type=int, default=s.max_queue_delay_us)
        g.add_argument(f"--{name}-instances", type=int, default=s.instance_count)
        g.add_argument(f"--{name}-max-queue-size", type=int, default=s.max_queue_size)
    p.add_argument("--check", action="store_true", help="only compare with the ONNX files")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from sam2_triton import model_config as mc

    args = build_parser().parse_args(argv)
    serving = {
        name: mc.ModelServing(
            max_batch_size=getattr(args, f"{name}_max_batch_size"),
            preferred_batch_sizes=getattr(args, f"{name}_preferred_batch_sizes"),
            max_queue_delay_us=getattr(args, f"{name}_queue_delay_us"),
            instance_count=getattr(args, f"{name}_instances"),
            max_queue_size=getattr(args, f"{name}_max_queue_size"),
        )
        for name in ("encoder", "decoder")
    }
    gpu = mc.RepositoryParams(
        model_size=args.model,
        precision=args.precision,
        trt_cache_dir=args.trt_cache_dir,
        **serving,
    )
    if not args.check:
        for path in mc.write_repository_configs(args.repository, gpu=gpu):
            print(f"wrote {path}")
        check_graph = args.repository / mc.PROMPT_CHECK / "1" / "model.onnx"
        if not check_graph.is_file():  # weightless, so it needs no export from a checkpoint
            from sam2_triton.export import export_prompt_check

            print(f"wrote {export_prompt_check(check_graph)}")
    problems = []
    for model in (mc.ENCODER, mc.DECODER, mc.DECODER_PROMPTS, mc.PROMPT_CHECK):
        onnx = args.repository / model / "1" / "model.onnx"
        if not onnx.is_file():
            print(f"note: {onnx} not exported yet; configs not checked against it")
            continue
        for config_path in [args.repository / model / "config.pbtxt"] + sorted(
            (args.repository / model / "configs").glob("*.pbtxt")
        ):
            for problem in mc.check_config_against_onnx(mc.read_config(config_path), onnx):
                problems.append(f"{config_path}: {problem}")
    if problems:
        raise UserError(f"{len(problems)} config mismatch(es), first: {problems[0]}")
    return 0


def cli() -> None:
    from sam2_triton.cli import run_cli

    run_cli(main)


if __name__ == "__main__":
    cli()
