#!/usr/bin/env python3
"""Regenerate the Triton configs of a model repository (see SETUP.md)."""

from sam2_triton.cli.configure_repository import cli

if __name__ == "__main__":
    cli()
