#!/usr/bin/env python3
"""Write perf_analyzer --input-data folders and print the commands (docs/benchmarks.md)."""

from sam2_triton.cli.perf_inputs import cli

if __name__ == "__main__":
    cli()
