#!/usr/bin/env python3
"""Build Triton request bodies for curl and read masks from its responses (docs/curl.md)."""

from sam2_triton.cli.make_request import cli

if __name__ == "__main__":
    cli()
