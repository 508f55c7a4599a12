"""``loadtest``: concurrent interactive sessions against a running server; fails on any error."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from sam2_triton.models import UserError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="loadtest.py",
        description="N concurrent clients each repeat: encode an image, decode several "
        "prompts (--mode stateless), or open a session on sam2_session with an image file "
        "and click several prompts (--mode sessions). Every answer must equal the same "
        "request made alone; any error or difference makes the exit code 1. Bounded by "
        "--duration and --max-sessions.",
    )
    p.add_argument("--url", default="localhost:8000", help="HOST:PORT (default %(default)s)")
    p.add_argument("--protocol", choices=("http", "grpc"), default="http")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--duration", type=float, default=60.0, help="seconds (default %(default)s)")
    p.add_argument(
        "--mode",
        choices=("stateless", "sessions"),
        default="stateless",
        help="the encoder and decoders, or sam2_session (default %(default)s)",
    )
    p.add_argument(
        "--decodes", type=int, default=4, help="decodes (clicks) per image (default %(default)s)"
    )
    p.add_argument("--max-sessions", type=int, default=1000, help="per client")
    p.add_argument(
        "--images", nargs="+", type=Path, help="images to use (default: scikit-image's photos)"
    )
    p.add_argument("--json", type=Path, help="write the summary as JSON here")
    p.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a server that is not on this machine (only one you operate)",
    )
    return p


def _default_images():
    try:
        from sam2_triton.testing import photos
    except ImportError:  # pragma: no cover - scikit-image comes with the dev extra
        raise UserError("pass --images (scikit-image's sample photos are not installed)") from None
    return list(photos().values())


def main(argv: Sequence[str] | None = None) -> int:
    from sam2_triton.client import load_image
    from sam2_triton.files import write_bytes_atomic
    from sam2_triton.loadtest import check_loopback, format_summary, run_load, to_json

    args = build_parser().parse_args(argv)
    if not args.allow_remote:
        check_loopback(args.url)
    images = [load_image(p) for p in args.images] if args.images else _default_images()
    summary = run_load(
        args.url,
        images,
        protocol=args.protocol,
        clients=args.clients,
        duration_s=args.duration,
        decodes_per_session=args.decodes,
        max_sessions_per_client=args.max_sessions,
        mode=args.mode,
    )
    print(format_summary(summary), flush=True)
    if args.json:
        write_bytes_atomic(args.json, to_json(summary).encode())
    if summary["errors"] or summary["mismatches"]:
        first = (summary["first_errors"] + summary["first_mismatches"])[0]
        counts = f"{summary['errors']} errors, {summary['mismatches']} differing answers"
        print(f"error: load test failed ({counts}); first: {first}", file=sys.stderr)
        return 1
    if not summary["sessions"]:
        raise UserError("no session completed within the duration; raise --duration")
    return 0


def cli() -> None:
    from sam2_triton.cli import run_cli

    run_cli(main)


if __name__ == "__main__":
    cli()
