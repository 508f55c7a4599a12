#!/usr/bin/env python3
"""Load-test a running sam2-triton server (see SETUP.md)."""

from sam2_triton.cli.loadtest import cli

if __name__ == "__main__":
    cli()
