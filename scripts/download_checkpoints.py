#!/usr/bin/env python3
"""Download Meta's SAM2.1 checkpoints, resumably and verified (see SETUP.md)."""

from sam2_triton.cli.download_checkpoints import cli

if __name__ == "__main__":
    cli()
