"""``serve_local``: the real tritonserver from the nvidia-pytriton wheel, no Docker needed."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from sam2_triton.models import UserError


def default_cuda_memory_pool_mb(
    config_name: str | None, models: Sequence[str] | None
) -> int | None:
    """2048 MiB for the GPU configs: a batch of the stateless encoder's outputs crosses
    from the python backend to Triton on the GPU, and Triton's default pool (64 MiB) is less
    than one; 0 for a server of models that answer from host memory alone
    (:data:`~sam2_triton.model_config.HOST_ANSWER_MODELS`): the pool is allocated whole at
    start, GPU memory such a server never uses; None (Triton's default) for the CPU configs."""
    from sam2_triton.model_config import HOST_ANSWER_MODELS

    if config_name == "cpu":
        return None
    if models and all(m in HOST_ANSWER_MODELS for m in models):
        return 0
    return 2048


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
    p.add_argument(
        "--web",
        type=int,
        metavar="PORT",
        help="also serve the click-to-segment page (web/) and Triton's HTTP API on one origin, "
        "http://HOST:PORT/, through nginx with the compose `web` service's configuration "
        "(deploy/nginx/web.conf: SECURITY.md's request bounds); needs nginx installed",
    )
    p.add_argument("--log-verbose", type=int, default=0, help="Triton's --log-verbose level")
    p.add_argument(
        "--load-model",
        action="append",
        metavar="NAME",
        dest="models",
        help="load only this model (repeat for several; an ensemble brings the models it "
        "calls), e.g. --load-model sam2_session for interactive segmentation alone "
        "(Triton's explicit model control). Default: every model of the repository",
    )
    p.add_argument(
        "--cuda-memory-pool-mb",
        type=int,
        default=None,
        help="CUDA memory pool on each GPU for GPU tensors between Triton and the backend "
        "(default: 2048 with the GPU configs, 0 where only sam2_session and sam2_video are "
        "loaded: they answer from host memory; Triton's own with --config-name cpu)",
    )
    p.add_argument(
        "--pinned-memory-pool-mb",
        type=int,
        default=None,
        help="Triton's pinned host memory pool for copies between host and GPU (default: "
        "Triton's own, 256)",
    )
    p.add_argument(
        "--exit-timeout", type=int, default=10, help="seconds to drain requests when stopped"
    )
    # A GPU repository's first start compiles sam2_video's tracker (about 4 minutes).
    p.add_argument("--ready-timeout", type=float, default=900, help="seconds to wait for readiness")
    s = p.add_argument_group(
        "supervision",
        "When tritonserver or one of its python stubs dies, or a model fails its health probe "
        "(scripts/healthcheck.py), the server is stopped, its leftovers removed and a new one "
        "started. Each restart is logged with its reason.",
    )
    s.add_argument(
        "--max-restarts",
        type=int,
        default=5,
        help="restarts in a row before giving up (default: %(default)s; 0: exit on the first "
        "failure)",
    )
    s.add_argument(
        "--restart-backoff",
        type=float,
        default=1.0,
        help="seconds before the first restart; doubles with each one in a row, up to 60 "
        "(default: %(default)s)",
    )
    s.add_argument(
        "--stable-after",
        type=float,
        default=300,
        help="seconds of serving after which the restart count starts again (default: "
        "%(default)s)",
    )
    s.add_argument(
        "--probe-interval",
        type=float,
        default=10,
        help="seconds between health probes of every model (default: %(default)s; 0: none)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from sam2_triton.server import EmbeddedTriton
    from sam2_triton.supervisor import RestartPolicy, Supervisor
    from sam2_triton.web_proxy import WebProxy, upstream_address

    args = build_parser().parse_args(argv)
    for port in (args.http_port, args.grpc_port, args.metrics_port):
        if not 0 < port < 65536:
            raise UserError(f"port {port} is not in 1..65535")
    web = None
    if args.web is not None:
        if args.web in (args.http_port, args.grpc_port, args.metrics_port):
            raise UserError(f"--web {args.web} is one of Triton's ports; choose another")
        web = WebProxy(upstream_address(args.host, args.http_port), args.web, args.host)
        web.check()  # at once, not after Triton's start
    if args.probe_interval < 0:
        raise UserError("--probe-interval must be ≥ 0")
    policy = RestartPolicy(args.max_restarts, args.restart_backoff, 60.0, args.stable_after)
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
            else default_cuda_memory_pool_mb(args.config_name, args.models)
        ),
        pinned_memory_pool_mb=args.pinned_memory_pool_mb,
        models=args.models,
    )
    supervisor = Supervisor(server, policy, args.ready_timeout, args.probe_interval)

    def request_stop(_signum, _frame) -> None:
        supervisor.stop()
        if web is not None:
            web.drain()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    def announce(seconds: float) -> None:
        # A model that failed to load is reported, and the others keep serving.
        for model, reason in server.unavailable_models().items():
            print(f"warning: model {model} is unavailable: {reason}", file=sys.stderr)
        print(
            f"sam2-triton serving in {seconds:.1f} s: HTTP {server.http_url}, "
            f"gRPC {server.grpc_url}, metrics {server.metrics_url}",
            flush=True,
        )
        if web is not None:
            print(f"the page: {web.url}", flush=True)

    with contextlib.ExitStack() as stack:
        if web is not None:  # nginx answers 502 until Triton is ready
            stack.enter_context(web)
        supervisor.run(on_ready=announce)
    print("sam2-triton stopped", file=sys.stderr)
    return 0


def cli() -> None:
    from sam2_triton.cli import run_cli

    run_cli(main)


if __name__ == "__main__":
    cli()
