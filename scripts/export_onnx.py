#!/usr/bin/env python3
"""Export a SAM2.1 checkpoint to ONNX in a Triton model repository (see SETUP.md)."""

from sam2_triton.cli.export_onnx import cli

if __name__ == "__main__":
    cli()
