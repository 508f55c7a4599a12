"""``download_checkpoints``: fetch Meta's SAM2.1 checkpoints, resumably, and verify them."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from sam2_triton.models import CHECKPOINT_BASE_URL, MODEL_SIZES, UserError, get_model_size


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="download_checkpoints.py",
        description="Download Meta's SAM2.1 checkpoints into DEST/<Meta's file name>. An "
        "interrupted download resumes when run again; a file is only ever saved under its "
        "final name once complete and loadable as the requested size. Each file's SHA-256 "
        "is recorded in DEST/SHA256SUMS (sha256sum's format) and checked on every later "
        "run and by the export.",
        epilog="Mirrors and air-gapped setups: put the .pt files in one folder served over "
        "HTTP(S) (e.g. `python -m http.server` in that folder) and pass its URL with "
        "--base-url or the SAM2_CHECKPOINT_BASE_URL environment variable.",
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--model",
        action="append",
        metavar="SIZE",
        help=f"one of {', '.join(MODEL_SIZES)}; repeat for several",
    )
    which.add_argument("--all", action="store_true", help="all four sizes")
    p.add_argument(
        "--dest",
        type=Path,
        default=Path("checkpoints"),
        help="folder to download into (default: %(default)s)",
    )
    p.add_argument(
        "--base-url",
        metavar="URL",
        help="folder URL holding the checkpoint files (default: $SAM2_CHECKPOINT_BASE_URL "
        f"if set, else {CHECKPOINT_BASE_URL})",
    )
    p.add_argument(
        "--sha256",
        metavar="HEX",
        help="the SHA-256 the checkpoint must have (one --model only), e.g. the one Hugging "
        "Face shows for the file in facebook/sam2.1-hiera-*; it takes the place of the one "
        "DEST/SHA256SUMS recorded. Meta publishes none (see SETUP.md)",
    )
    p.add_argument(
        "--no-verify",
        action="store_true",
        help="do not load the files to check them (no torch needed; the byte count that the "
        "server announces and the SHA-256 are still checked)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="give up when the server sends nothing for this long (default: %(default)g)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Sizes are checked here, not by argparse `choices`, so that a bad one is a one-line
    # error like every other mistake.
    names = list(MODEL_SIZES) if args.all else list(dict.fromkeys(args.model))
    sizes = [get_model_size(name) for name in names]
    if args.sha256 is not None and len(sizes) != 1:
        raise UserError("--sha256 is the digest of one file: give it with one --model")

    from sam2_triton.checkpoints import default_base_url, download_checkpoint

    base_url = args.base_url or default_base_url()
    for size in sizes:
        download_checkpoint(
            size,
            args.dest,
            base_url,
            verify=not args.no_verify,
            sha256=args.sha256,
            timeout=args.timeout,
        )
    return 0


def cli() -> None:
    from sam2_triton.cli import run_cli

    run_cli(main)


if __name__ == "__main__":
    cli()
