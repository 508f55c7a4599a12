"""``serve_local``: the real tritonserver from the nvidia-pytriton wheel, no Docker needed."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from sam2_triton.models import UserError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="serve_local.py",
        description="Serve a sam2-triton model repository with the tritonserver that the "
        "nvidia-pytriton wheel ships (python backend + our ONNX Runtime backend). Runs in "
        "the foreground until Ctrl-C or SIGTERM.",
    )
    p.add_argument(
        "--repository",
        type=Path,
        default=Path("model_repository"),
        help="model repository (default: %(default)s)",
    )
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--metrics-port", type=int, default=8002)
    p.add_argument(
        "--config-name",
        help="use <model>/configs/<NAME>.pbtxt where present, e.g. 'cpu' without a GPU "
        "(Triton's --model-config-name)",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address the endpoints bind to (default: %(default)s; 0.0.0.0 opens them to "
        "the network: see SECURITY.md)",
    )
    p.add_argument("--log-verbose", type=int, default=0, help="Triton's --log-verbose level")
    p.add_argument(
        "--cuda-memory-pool-mb",
        type=int,
        default=None,
        help="CUDA memory pool on GPU 0 for GPU tensors between Triton and the backend "
        "(default: 2048 with the GPU configs, Triton's own default with --config-name cpu)",
    )
    p.add_argument(
        "--exit-timeout", type=int, default=10, help="seconds to drain requests when stopped"
    )
    p.add_argument("--ready-timeout", type=float, default=300, help="seconds to wait for readiness")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from sam2_triton.server import EmbeddedTriton

    args = build_parser().parse_args(argv)
    for port in (args.http_port, args.grpc_port, args.metrics_port):
        if not 0 < port < 65536:
            raise UserError(f"port {port} is not in 1..65535")
    server = EmbeddedTriton(
        repository=args.repository,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        config_name=args.config_name,
        host=args.host,
        log_verbose=args.log_verbose,
        exit_timeout_s=args.exit_timeout,
        cuda_memory_pool_mb=(
            args.cuda_memory_pool_mb
            if args.cuda_memory_pool_mb is not None
            else (None if args.config_name == "cpu" else 2048)
        ),
    )
    stopping = []

    def request_stop(signum, _frame) -> None:
        stopping.append(signum)
        if server.process is not None and server.process.poll() is None:
            server.process.terminate()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    server.start()
    try:
        seconds = server.wait_ready(args.ready_timeout, allow_unavailable=True)
        # A model that failed to load is reported, and the others keep serving.
        for model, reason in server.unavailable_models().items():
            print(f"warning: model {model} is unavailable: {reason}", file=sys.stderr)
        print(
            f"sam2-triton serving in {seconds:.1f} s: HTTP {server.http_url}, "
            f"gRPC {server.grpc_url}, metrics {server.metrics_url}",
            flush=True,
        )
        code = server.process.wait() if server.process else 0
    except UserError:
        if stopping:
            code = 0
        else:
            raise
    finally:
        final = server.stop()
    if stopping:
        print("sam2-triton stopped", file=sys.stderr)
        return 0
    code = final if final is not None else code
    if code:
        raise UserError(f"tritonserver exited with code {code} (see its log above)")
    return 0


def cli() -> None:
    from sam2_triton.cli import run_cli

    run_cli(main)


if __name__ == "__main__":
    cli()
