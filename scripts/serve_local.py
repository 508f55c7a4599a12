#!/usr/bin/env python3
"""Serve the model repository with the pip-installed tritonserver (see SETUP.md)."""

from sam2_triton.cli.serve_local import cli

if __name__ == "__main__":
    cli()
