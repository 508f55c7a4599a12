#!/usr/bin/env python3
"""Probe every model of a running server; exit 0 when each one answered (see SETUP.md)."""

from sam2_triton.health import cli

if __name__ == "__main__":
    cli()
