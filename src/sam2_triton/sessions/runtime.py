"""ONNX Runtime sessions fed and read as torch tensors that stay on one device.

A stateful model keeps each session's image features on its instance's device between
requests. :class:`TorchOrtSession` binds torch tensors (CPU or CUDA) to an ONNX Runtime
session through I/O binding, so on a GPU the features go from the encoder's output buffer
into the decoder's input without ever crossing to the host, and the outputs land in torch
tensors that the pre/post-processing (also torch, on the same device) reads in place.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from sam2_triton.models import UserError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


def torch_device(kind: str, device_id: int = 0) -> "torch.device":
    """The torch device of a Triton model instance (``kind`` ``"GPU"`` or ``"CPU"``).

    A GPU instance on a machine where torch sees no GPU is a configuration error, not
    something to silently run on the CPU: it would be slow and hold host memory instead.
    """
    import torch

    if kind.upper() == "GPU":
        if not torch.cuda.is_available():
            raise UserError(
                "this instance is KIND_GPU but torch sees no GPU (use the CPU config: "
                "--model-config-name=cpu)"
            )
        return torch.device("cuda", device_id)
    return torch.device("cpu")


def providers_for(device: "torch.device") -> list:
    """ONNX Runtime execution providers for ``device``: CUDA EP on a GPU, else the CPU EP."""
    import onnxruntime as ort

    if device.type != "cuda":
        return ["CPUExecutionProvider"]
    try:
        ort.preload_dlls()  # CUDA/cuDNN from the nvidia-* wheels torch brought
    except Exception as e:  # noqa: BLE001 - older onnxruntime, or libraries on LD_LIBRARY_PATH
        log.info("onnxruntime.preload_dlls() did not run (%s)", e)
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise UserError(
            "this instance is KIND_GPU but the installed onnxruntime has no CUDA execution "
            "provider (install onnxruntime-gpu)"
        )
    options = {
        "device_id": device.index or 0,
        # Heuristic cuDNN algorithm choice: no per-shape benchmark runs (each new point count
        # or batch would otherwise pay one) and no large benchmark workspace.
        "cudnn_conv_algo_search": "HEURISTIC",
    }
    return [("CUDAExecutionProvider", options), "CPUExecutionProvider"]


class TorchOrtSession:
    """One ONNX graph run on torch tensors of one device (float32 inputs and outputs).

    ``output_shapes(batch)`` gives each output's shape for a run whose leading dim is
    ``batch`` (the graphs of this project have fixed shapes apart from that and the point
    count). Outputs are allocated as torch tensors and returned; inputs are bound in place.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        device: "torch.device",
        intra_op_threads: int = 0,
    ) -> None:
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path} is missing (export it with scripts/export_onnx.py)")
        options = ort.SessionOptions()
        if intra_op_threads:
            options.intra_op_num_threads = intra_op_threads
        if device.type != "cuda":
            # ONNX Runtime's CPU arena keeps the encoder's peak working set for good (it
            # doubled a session instance's memory, to 2.2 GB with tiny); without it the
            # memory goes back after each run, at no measurable cost in speed.
            options.enable_cpu_mem_arena = False
        self.device = device
        self.path = path
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers_for(device))
        except Exception as e:  # noqa: BLE001 - any load failure is the model's
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"cannot load {path}: {first}") from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def run(
        self,
        feed: Mapping[str, "torch.Tensor"],
        output_shapes: Mapping[str, Sequence[int]],
    ) -> dict[str, "torch.Tensor"]:
        """Run on ``feed`` (every graph input, float32 on this device) and return the outputs
        named in ``output_shapes`` as new float32 tensors of those shapes."""
        import numpy as np
        import torch

        kind = "cuda" if self.device.type == "cuda" else "cpu"
        index = self.device.index or 0
        binding = self.session.io_binding()
        keep = []  # contiguous copies stay alive until the run returns
        for name in self.input_names:
            value = feed[name]
            if value.device != self.device or value.dtype != torch.float32:
                value = value.to(self.device, torch.float32)
            value = value.contiguous()
            keep.append(value)
            binding.bind_input(name, kind, index, np.float32, list(value.shape), value.data_ptr())
        outputs = {}
        for name, shape in output_shapes.items():
            out = torch.empty(tuple(shape), dtype=torch.float32, device=self.device)
            binding.bind_output(name, kind, index, np.float32, list(out.shape), out.data_ptr())
            outputs[name] = out
        if kind == "cuda":
            # torch wrote the inputs on its stream; ONNX Runtime reads them on its own.
            torch.cuda.current_stream(self.device).synchronize()
        self.session.run_with_iobinding(binding)  # returns once the device work is done
        return outputs
