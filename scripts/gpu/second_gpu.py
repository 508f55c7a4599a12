#!/usr/bin/env python3
"""A session engine on a GPU other than 0, made as a ``sam2_session`` instance makes it: where
its process holds device memory.

Builds the engine on ``--gpu`` (its device made current by ``torch_device``, as an
instance's is; PyTorch networks, ``torch.compile`` off), warms it up (CUDA graphs captured),
then prints ``nvidia-smi``'s device memory of every process on every GPU: the engine's
process should appear on that GPU alone. Needs a machine with two GPUs or more.

    python scripts/gpu/second_gpu.py --checkpoint C --model tiny --gpu 1
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--model", default="tiny")
    p.add_argument("--gpu", type=int, default=1)
    args = p.parse_args()

    import torch

    from sam2_triton.bench.sessions import instance_engine
    from sam2_triton.sessions.runtime import torch_device
    from sam2_triton.sessions.torch_networks import TorchNetworks

    device = torch_device("GPU", args.gpu)
    networks = TorchNetworks(args.model, args.checkpoint, "fp16", "none")
    engine = instance_engine(device, networks=networks)
    engine.warm()
    torch.cuda.synchronize(device)
    print(f"an engine on GPU {args.gpu}; its process on each GPU (nvidia-smi):")
    query = ["nvidia-smi", "--query-compute-apps=pid,gpu_bus_id,used_memory", "--format=csv"]
    print(subprocess.run(query, capture_output=True, text=True, check=False).stdout)


if __name__ == "__main__":
    main()
