#!/usr/bin/env python3
"""Where the models' time goes: see ``sam2_triton.bench.profile`` (``--help``)."""

from sam2_triton.cli.profile_models import cli

if __name__ == "__main__":
    cli()
