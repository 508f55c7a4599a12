#!/usr/bin/env python3
"""Benchmark SAM2.1 in process (ONNX Runtime, PyTorch) and through a running Triton."""

from sam2_triton.bench.cli import cli

if __name__ == "__main__":
    cli()
