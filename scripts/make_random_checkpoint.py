#!/usr/bin/env python3
"""Write a seeded random-init SAM2.1 checkpoint in Meta's format (for tests and benchmarks)."""

import argparse

from sam2_triton.cli import run_cli
from sam2_triton.models import MODEL_SIZES


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", required=True, choices=list(MODEL_SIZES))
    p.add_argument("--out", required=True, help="checkpoint path to write")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--smooth-masks",
        action="store_true",
        help="smoother masks than random speckle, several times fewer runs (the decoder's "
        "upsampling kernels averaged; for benchmarks of the answers' size)",
    )
    args = p.parse_args(argv)
    from sam2_triton.testing import save_random_checkpoint

    print(save_random_checkpoint(args.model, args.out, args.seed, smooth_masks=args.smooth_masks))
    return 0


if __name__ == "__main__":
    run_cli(main)
