#!/usr/bin/env python3
"""What a bare CUDA process costs on the device before any model: the process's device
memory (``nvidia-smi``'s count for this process), torch's reserve and the context's stack
limit after each first use of a library a ``sam2_session`` instance runs (the context, a
cuBLAS FP16 matrix product, then FP32 and a cuBLASLt linear with bias, cuDNN convolutions,
fused attention). One JSON line.

    python scripts/gpu/context_memory.py --out OUT/context_memory.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from sam2_triton.bench.report import append_json_line


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()

    import torch
    import torch.nn.functional as F

    from sam2_triton.bench.profile import cuda_stack_limit, device_mib_by_process

    cuda = torch.device("cuda")
    half = {"device": cuda, "dtype": torch.float16}
    steps = {
        "context": lambda: torch.zeros(1, device=cuda),
        "cublas_fp16_matmul": lambda: torch.randn(4096, 4096, **half)
        @ torch.randn(4096, 4096, **half),
        # Whether a float32 product or cuBLASLt's bias epilogue (F.linear) asks for another
        # workspace than the float16 product's (reserve_cublas_workspaces runs both dtypes).
        "cublas_fp32_matmul_8x8": lambda: torch.ones(8, 8, device=cuda)
        @ torch.ones(8, 8, device=cuda),
        "cublaslt_fp16_linear_bias": lambda: F.linear(
            torch.randn(64, 256, **half), torch.randn(256, 256, **half), torch.randn(256, **half)
        ),
        "cudnn_conv_7x7_stride_4": lambda: F.conv2d(
            torch.randn(1, 3, 1024, 1024, **half), torch.randn(112, 3, 7, 7, **half), stride=4
        ),
        "cudnn_conv_transpose_2x2": lambda: F.conv_transpose2d(
            torch.randn(16, 256, 64, 64, **half), torch.randn(256, 64, 2, 2, **half), stride=2
        ),
        "flash_attention": lambda: F.scaled_dot_product_attention(
            *(torch.randn(1, 8, 4096, 64, **half) for _ in range(3))
        ),
        "masked_attention": lambda: F.scaled_dot_product_attention(
            *(torch.randn(16, 8, 16, 32, **half) for _ in range(3)),
            attn_mask=torch.ones(16, 1, 16, 16, device=cuda, dtype=torch.bool),
        ),
    }
    row = {}
    for name, step in steps.items():
        step()
        torch.cuda.synchronize()
        row[name] = {
            "process_mib": device_mib_by_process().get(os.getpid(), 0),
            "torch_reserved_mib": round(torch.cuda.memory_reserved() / 2**20),
            "stack_limit_bytes": cuda_stack_limit(),
        }
    append_json_line(row, args.out)
    print(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
