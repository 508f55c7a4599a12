#!/usr/bin/env python3
"""Frames/s of SAM2.1 video tracking served by Triton beside Meta's predictor: ``--help``."""

from sam2_triton.bench.video import cli

if __name__ == "__main__":
    cli()
