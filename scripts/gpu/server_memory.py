#!/usr/bin/env python3
"""What the ``tritonserver`` process itself holds on the GPU under each set of server flags:
a repository of one python model with an instance that does nothing (on the GPU, and once on
the CPU: the python backend sets a GPU instance's device in the server), started once per
flag set; the device memory of the server and of the stub (``nvidia-smi``), one JSON line per
start.

    python scripts/gpu/server_memory.py --out OUT/server_memory.jsonl
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

CONFIG = """
backend: "python"
max_batch_size: 0
input [{ name: "x", data_type: TYPE_FP32, dims: [1] }]
output [{ name: "y", data_type: TYPE_FP32, dims: [1] }]
instance_group [{ kind: %s, count: 1 }]
"""

MODEL = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        answers = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
            answers.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", x)]))
        return answers
"""

#: name → (cuda_memory_pool_mb, pinned_memory_pool_mb, instance kind)
FLAG_SETS = {
    "defaults": (None, None, "KIND_GPU"),
    "cuda_pool_0": (0, None, "KIND_GPU"),
    "cuda_pool_0_pinned_0": (0, 0, "KIND_GPU"),
    "cuda_pool_0_pinned_0_kind_cpu": (0, 0, "KIND_CPU"),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()

    from sam2_triton.bench.profile import device_mib_by_process
    from sam2_triton.bench.report import append_json_line
    from sam2_triton.server import EmbeddedTriton, free_port

    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "nothing"
        (model / "1").mkdir(parents=True)
        (model / "1" / "model.py").write_text(MODEL)
        for name, (cuda_mb, pinned_mb, kind) in FLAG_SETS.items():
            (model / "config.pbtxt").write_text(CONFIG % kind)
            ports = {k: free_port() for k in ("http_port", "grpc_port", "metrics_port")}
            server = EmbeddedTriton(
                Path(tmp),
                cuda_memory_pool_mb=cuda_mb,
                pinned_memory_pool_mb=pinned_mb,
                precheck=False,
                **ports,
            )
            with server:
                server.wait_ready(120)
                used = device_mib_by_process()
                stubs = server.stub_processes()
                row = {
                    "flags": name,
                    "command_flags": [a for a in server.command(Path(tmp)) if "pool" in a],
                    "all_mib": used,
                    "server_mib": used.get(server.process.pid, 0),
                    "stub_mib": sum(used.get(pid, 0) for pid in stubs),
                }
            print(json.dumps(row))
            append_json_line(row, args.out)


if __name__ == "__main__":
    main()
