#!/usr/bin/env python3
"""Track objects through a video with a running sam2-triton server: ``--help`` for flags.

The logic lives in ``sam2_triton.client`` (a library you can import) and
``sam2_triton.cli.video_client``; this file only calls it.
"""

import sys
from pathlib import Path

try:
    from sam2_triton.cli.video_client import cli
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from sam2_triton.cli.video_client import cli

if __name__ == "__main__":
    cli()
