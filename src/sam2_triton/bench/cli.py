"""``benchmark``: latency and throughput of SAM2.1 in process and through Triton.

Examples::

    # CI / a laptop: seconds, tiny, CPU, random weights exported on the fly
    python scripts/benchmark.py --quick

    # A GPU: in-process ONNX Runtime (FP32 + FP16 files) and PyTorch eager baselines
    python scripts/benchmark.py --model base_plus --repository model_repository \\
        --fp16-repository model_repository_fp16 --checkpoint checkpoints/sam2.1_hiera_base_plus.pt

    # A running Triton (serve_local.py or docker compose), with its baselines
    python scripts/benchmark.py --backends triton --url localhost:8000 \\
        --grpc-url localhost:8001 --repository model_repository
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import signal
import tempfile
from collections.abc import Sequence
from pathlib import Path

from sam2_triton.models import MODEL_SIZES, UserError, get_model_size

log = logging.getLogger("sam2_triton.bench")

BACKENDS = ("onnxruntime", "pytorch", "triton")
MODELS = ("encoder", "decoder", "interactive", "sessions")


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"need integers >= 1: {text!r}")
    return values


def _choices(allowed: Sequence[str]):
    def parse(text: str) -> tuple[str, ...]:
        values = tuple(v.strip() for v in text.split(",") if v.strip())
        bad = [v for v in values if v not in allowed]
        if bad or not values:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(allowed)}: {text!r}")
        return values

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="benchmark.py",
        description="Benchmark SAM2.1: in-process ONNX Runtime and PyTorch eager baselines, "
        "and a running Triton over HTTP/gRPC. Writes results.json, results.md and "
        "latency_vs_concurrency.png.",
        epilog=__doc__.split("Examples::", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="CI mode: tiny, CPU, a few iterations")
    p.add_argument("--model", metavar="SIZE", help=f"one of {', '.join(MODEL_SIZES)}")
    p.add_argument("--repository", type=Path, help="model repository with the ONNX files")
    p.add_argument("--fp16-repository", type=Path, help="repository exported --precision fp16")
    p.add_argument("--checkpoint", type=Path, help="checkpoint for the PyTorch baselines")
    p.add_argument(
        "--backends",
        type=_choices(BACKENDS),
        help="default: onnxruntime,pytorch " "(+triton with --url/--grpc-url)",
    )
    p.add_argument(
        "--models", type=_choices(MODELS), help="default: encoder,decoder,interactive,sessions"
    )
    p.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        help="in-process device (default: cuda " "if available)",
    )
    p.add_argument(
        "--io-binding",
        choices=("on", "off", "both"),
        help="ONNX Runtime on CUDA: " "inputs/outputs on the device (default: both)",
    )
    p.add_argument("--encoder-batches", type=_ints, help="default 1,8 (quick: 1)")
    p.add_argument("--decoder-batches", type=_ints, help="default 1,32 (quick: 1,4)")
    p.add_argument("--points", type=int, help="points per prompt (default 2)")
    p.add_argument("--clicks", type=int, help="decodes per interactive session (default 5)")
    p.add_argument("--ort-concurrency", type=_ints, help="threads on one in-process session")
    p.add_argument("--url", help="Triton HTTP endpoint, host:port")
    p.add_argument("--grpc-url", help="Triton gRPC endpoint, host:port")
    p.add_argument("--protocols", type=_choices(("http", "grpc")), help="default: http,grpc")
    p.add_argument("--shm", type=_choices(("none", "system")), help="default: none,system")
    p.add_argument(
        "--wire-dtypes",
        type=_choices(("fp32", "fp16")),
        help="default: fp32,fp16 " "(fp16 only where the model config declares it)",
    )
    p.add_argument("--concurrency", type=_ints, help="Triton clients (default 1,2,4,8)")
    p.add_argument(
        "--session-concurrency",
        type=_ints,
        help="users clicking on sam2_session at once, one session each (default 1,8,32)",
    )
    p.add_argument(
        "--client-processes",
        type=int,
        help="processes the session users' clients run in (default: one per 8 users; one "
        "Python process's threads manage about 2,000 small requests a second)",
    )
    p.add_argument(
        "--session-batch",
        type=int,
        help="sessions' clicks per execute in the in-process engine's batch case (default 16, "
        "sam2_session's max batch)",
    )
    p.add_argument("--triton-encoder-batches", type=_ints, help="images per request (default 1)")
    p.add_argument(
        "--triton-decoder-batches",
        type=_ints,
        help="prompts per request (default 1,8; quick: 1,4). Each K > 1 is measured twice: "
        "sam2_decoder with K images' features, and sam2_decoder_prompts with one image's",
    )
    p.add_argument("--iterations", type=int, help="timed calls per case and worker")
    p.add_argument("--warmup", type=int, help="untimed calls per case and worker first")
    p.add_argument("--min-time", type=float, help="keep timing a case at least this long (s)")
    p.add_argument("--no-copy-count", action="store_true", help="skip counting ORT Memcpy nodes")
    p.add_argument("--no-predictor", action="store_true", help="skip SAM2ImagePredictor")
    p.add_argument("--label", default="", help="tag stored with every result")
    p.add_argument("--out", type=Path, help="output folder (default bench_results/<time>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def config_from_args(args: argparse.Namespace):
    """The :class:`~sam2_triton.bench.suite.BenchConfig` the flags describe."""
    from sam2_triton.bench.suite import BenchConfig

    overrides = {}
    if args.model:
        overrides["model_size"] = get_model_size(args.model).name
    mapping = {
        "repository": "repository",
        "fp16_repository": "fp16_repository",
        "checkpoint": "checkpoint",
        "models": "models",
        "device": "device",
        "encoder_batches": "encoder_batches",
        "decoder_batches": "decoder_batches",
        "points": "points",
        "clicks": "clicks",
        "ort_concurrency": "ort_concurrency",
        "protocols": "protocols",
        "shm": "shm",
        "wire_dtypes": "wire_dtypes",
        "concurrency": "concurrency",
        "session_concurrency": "session_concurrency",
        "session_batch": "session_batch",
        "client_processes": "session_client_processes",
        "triton_encoder_batches": "triton_encoder_batches",
        "triton_decoder_batches": "triton_decoder_batches",
        "iterations": "iterations",
        "warmup": "warmup",
        "min_time": "min_time_s",
    }
    for arg, key in mapping.items():
        value = getattr(args, arg)
        if value is not None:
            overrides[key] = value
    if args.io_binding:
        overrides["io_binding"] = {"on": (True,), "off": (False,), "both": (False, True)}[
            args.io_binding
        ]
    if args.url:
        overrides["http_url"] = args.url
    if args.grpc_url:
        overrides["grpc_url"] = args.grpc_url
    backends = args.backends or (
        ("onnxruntime", "pytorch") + (("triton",) if args.url or args.grpc_url else ())
    )
    overrides["backends"] = backends
    if args.no_copy_count:
        overrides["count_copies"] = False
    if args.no_predictor:
        overrides["predictor"] = False
    overrides["label"] = args.label
    overrides["progress"] = not args.no_progress
    config = BenchConfig.quick(**overrides) if args.quick else BenchConfig(**overrides)
    if args.device is None and not args.quick:
        config.device = "cuda" if _cuda_available() else "cpu"
    if config.device == "cpu":
        config.io_binding = (False,)
        config.torch_precisions = ("fp32",)
    for key in ("iterations", "points", "clicks"):
        if getattr(config, key) < 1:
            raise UserError(f"--{key} must be >= 1")
    if config.warmup < 0 or config.min_time_s < 0:
        raise UserError("--warmup and --min-time must be >= 0")
    return config


def _cuda_available() -> bool:
    try:
        import onnxruntime as ort

        if "CUDAExecutionProvider" in ort.get_available_providers():
            return True
    except ImportError:
        pass
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def provision(config, workdir: Path) -> None:
    """Without ``--repository``/``--checkpoint``: a seeded random-init checkpoint of the size
    and its FP32 export in ``workdir`` (speed does not depend on the weights' values)."""
    if config.repository is not None and (
        config.checkpoint is not None or "pytorch" not in config.backends
    ):
        return
    try:
        from sam2_triton import export
        from sam2_triton.testing import save_random_checkpoint
    except ImportError as e:
        raise UserError(f"give --repository/--checkpoint, or install the export extra ({e})") from e
    size = get_model_size(config.model_size)
    if config.checkpoint is None:
        log.info("no --checkpoint: using a random-init %s (weights do not change speed)", size.name)
        config.checkpoint = save_random_checkpoint(size.name, workdir / size.checkpoint_file)
    if config.repository is None:
        log.info("no --repository: exporting %s to %s", size.name, workdir)
        model = export.load_sam2(size, config.checkpoint)
        config.repository = workdir / "model_repository"
        export.export_encoder(model, config.repository / "sam2_encoder" / "1" / "model.onnx")
        export.export_decoder(model, config.repository / "sam2_decoder" / "1" / "model.onnx")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = config_from_args(args)
    for flag, path in (
        ("--repository", config.repository),
        ("--fp16-repository", config.fp16_repository),
        ("--checkpoint", config.checkpoint),
    ):
        if path is not None and not Path(path).exists():
            raise UserError(f"{flag} {path} does not exist")
    out = args.out or Path("bench_results") / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)

    from sam2_triton.bench import report as rep
    from sam2_triton.bench.suite import Suite

    # A time limit (timeout(1), a scheduler) sends SIGTERM: end like Ctrl-C, so the cases
    # measured so far are still written.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with tempfile.TemporaryDirectory(prefix="sam2-bench-") as tmp:
        if {"onnxruntime", "pytorch"} & set(config.backends):
            provision(config, Path(tmp))
        report = Suite(config).run()
    json_path = rep.write_json(report, out / "results.json")
    md_path = rep.write_markdown(report, out / "results.md")
    png_path = rep.plot_latency_vs_concurrency(report, out / "latency_vs_concurrency.png")
    print(rep.markdown(report))
    print(f"wrote {json_path}, {md_path}" + (f", {png_path}" if png_path else ""))
    return 0


def cli() -> None:
    from sam2_triton.cli import run_cli

    run_cli(main)
