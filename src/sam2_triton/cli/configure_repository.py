"""``configure_repository``: regenerate the Triton configs of a model repository."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from pathlib import Path

from sam2_triton.model_config import SESSION_COMPILE_MODES, SESSION_RUNTIMES
from sam2_triton.models import MODEL_SIZES, UserError

#: ``--session-*`` flags and the :class:`~sam2_triton.model_config.SessionServing` field each sets.
SESSION_FLAGS = {
    "max_batch_size": "requests of different sessions per execution",
    "instances": "model instances (each keeps its own sessions)",
    "max_sessions": "live sessions per instance (least recently used evicted first)",
    "idle_timeout": "seconds after its last request a session is dropped",
    "max_image_pixels": "larger images are refused",
}


def _true_or_false(text: str) -> bool:
    if text not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return text == "true"


def _sizes(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


#: What ``--session-gpus`` and ``--video-gpus`` say.
GPUS_HELP = (
    "comma-separated GPU indices, each to get --{model}-instances instances (default: every "
    "GPU, Triton's own placement)"
)

#: ``--video-*`` flags: the :class:`~sam2_triton.model_config.VideoServing` field, type, meaning.
VIDEO_FLAGS = {
    "instances": ("instance_count", int, "model instances (each keeps its own videos)"),
    "gpus": ("gpus", _sizes, GPUS_HELP.format(model="video")),
    "max_videos": ("max_videos", int, "live videos per instance (least recently used evicted)"),
    "idle_timeout": ("idle_timeout_s", int, "seconds after its last request a video is dropped"),
    "max_frames": ("max_frames", int, "frames a video may have"),
    "max_objects": ("max_objects", int, "objects a video may track"),
    "precision": ("precision", str, "bfloat16 (CUDA autocast) or float32"),
    "image_size": ("image_size", int, "the model's input side (0: the model's, 1024)"),
    "feature_batch": ("feature_batch", int, "frames per image-encoder run in a propagation"),
    "memory_release_idle": (
        "memory_release_idle_s",
        float,
        "seconds idle after which a GPU instance gives a propagation's cached memory back "
        "(0: never)",
    ),
    "batch_objects": (
        "batch_objects",
        _true_or_false,
        "true: track a frame's objects in one batch where their memories line up",
    ),
    "torch_compile": (
        "torch_compile",
        str,
        "none, or the torch.compile mode of the tracker's networks (GPU default: "
        "reduce-overhead, twice the frames/s, minutes of compiling at the first load; "
        "max-autotune is Meta's VOS, many more minutes of autotuning)",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="configure_repository.py",
        description="Write config.pbtxt (GPU) and configs/cpu.pbtxt (CPU) for sam2_encoder, "
        "sam2_decoder, sam2_decoder_prompts, sam2_prompt_check, the sam2 ensemble, "
        "sam2_session and sam2_video. Flags change the configs of --target (default: the GPU "
        "ones); the others keep their defaults. The exported ONNX files are not touched "
        "(the weightless sam2_prompt_check graph is written if missing).",
    )
    p.add_argument("--repository", type=Path, default=Path("model_repository"))
    p.add_argument("--model", default="base_plus", choices=list(MODEL_SIZES))
    p.add_argument(
        "--target",
        choices=("gpu", "cpu"),
        default="gpu",
        help="which configs the flags below change: config.pbtxt (gpu) or configs/cpu.pbtxt",
    )
    p.add_argument("--precision", choices=("FP16", "FP32"), help="TensorRT (GPU)")
    p.add_argument("--trt-cache-dir")
    for name in ("encoder", "decoder"):
        g = p.add_argument_group(name)
        g.add_argument(f"--{name}-max-batch-size", type=int)
        g.add_argument(f"--{name}-preferred-batch-sizes", type=_sizes)
        g.add_argument(f"--{name}-queue-delay-us", type=int)
        g.add_argument(f"--{name}-instances", type=int)
        g.add_argument(f"--{name}-max-queue-size", type=int)
    g = p.add_argument_group("sam2_session")
    for flag, meaning in SESSION_FLAGS.items():
        g.add_argument(f"--session-{flag.replace('_', '-')}", type=int, help=meaning)
    g.add_argument(
        "--session-runtime",
        choices=SESSION_RUNTIMES,
        help="what runs the networks: the exported ONNX graphs, or the PyTorch modules they "
        "are traced from (on sam2_video's checkpoint)",
    )
    g.add_argument(
        "--session-torch-compile",
        choices=SESSION_COMPILE_MODES,
        help="with --session-runtime pytorch on a GPU: torch.compile's mode (none: eager)",
    )
    g.add_argument("--session-gpus", type=_sizes, help=GPUS_HELP.format(model="session"))
    g.add_argument(
        "--session-memory-release-idle",
        type=float,
        metavar="SECONDS",
        help="on a GPU, an instance idle this long gives back the device memory a burst left "
        "in torch's cache (0: never)",
    )
    g = p.add_argument_group("sam2_video")
    for flag, (_field, kind, meaning) in VIDEO_FLAGS.items():
        g.add_argument(f"--video-{flag.replace('_', '-')}", type=kind, help=meaning)
    p.add_argument("--check", action="store_true", help="only compare with the ONNX files")
    return p


def _changed(base, **values):
    """``base`` (a frozen dataclass) with the flags that were given."""
    given = {k: v for k, v in values.items() if v is not None}
    return dataclasses.replace(base, **given) if given else base


def params_from_args(args: argparse.Namespace):
    """The GPU and CPU :class:`~sam2_triton.model_config.RepositoryParams` the flags ask for."""
    from sam2_triton import model_config as mc

    gpu = mc.RepositoryParams(model_size=args.model)
    cpu = mc.RepositoryParams.cpu_defaults(args.model)
    base = gpu if args.target == "gpu" else cpu
    serving = {
        name: _changed(
            getattr(base, name),
            max_batch_size=getattr(args, f"{name}_max_batch_size"),
            preferred_batch_sizes=getattr(args, f"{name}_preferred_batch_sizes"),
            max_queue_delay_us=getattr(args, f"{name}_queue_delay_us"),
            instance_count=getattr(args, f"{name}_instances"),
            max_queue_size=getattr(args, f"{name}_max_queue_size"),
        )
        for name in ("encoder", "decoder")
    }
    session = _changed(
        base.session,
        max_batch_size=args.session_max_batch_size,
        instance_count=args.session_instances,
        gpus=args.session_gpus,
        max_sessions=args.session_max_sessions,
        idle_timeout_s=args.session_idle_timeout,
        max_image_pixels=args.session_max_image_pixels,
        memory_release_idle_s=args.session_memory_release_idle,
        runtime=args.session_runtime,
        # torch.compile is the pytorch runtime's: ONNX Runtime asked for alone turns it off.
        torch_compile=args.session_torch_compile
        or ("none" if args.session_runtime == "onnxruntime" else None),
    )
    video = _changed(
        base.video,
        **{field: getattr(args, f"video_{flag}") for flag, (field, _, _) in VIDEO_FLAGS.items()},
    )
    changed = _changed(
        base,
        precision=args.precision,
        trt_cache_dir=args.trt_cache_dir,
        session=session,
        video=video,
        **serving,
    )
    return (changed, cpu) if args.target == "gpu" else (gpu, changed)


def main(argv: Sequence[str] | None = None) -> int:
    from sam2_triton import model_config as mc
    from sam2_triton.export import CUDA_MODEL_FILENAME

    args = build_parser().parse_args(argv)
    gpu, cpu = params_from_args(args)
    if not args.check:
        for path in mc.write_repository_configs(args.repository, gpu=gpu, cpu=cpu):
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
        graphs = [onnx, onnx.with_name(CUDA_MODEL_FILENAME)]  # the fused one, if exported
        for config_path in [args.repository / model / "config.pbtxt"] + sorted(
            (args.repository / model / "configs").glob("*.pbtxt")
        ):
            for graph in (g for g in graphs if g.is_file()):
                config = mc.read_config(config_path)
                for problem in mc.check_config_against_onnx(config, graph):
                    problems.append(f"{config_path} vs {graph.name}: {problem}")
    if problems:
        raise UserError(f"{len(problems)} config mismatch(es), first: {problems[0]}")
    return 0


def cli() -> None:
    from sam2_triton.cli import run_cli

    run_cli(main)


if __name__ == "__main__":
    cli()
