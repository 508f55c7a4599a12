"""Tensors between Triton's python stub and numpy, through DLPack (torch).

Why not the stub's ``Tensor.as_numpy()`` and ``Tensor(name, array)``: a stub built against
numpy 1.x (the embedded tritonserver's, from nvidia-pytriton) misreads numpy 2's type
descriptors. On the GPU machine (numpy 2.5) it scrambled 1-byte inputs (``image_bytes``)
and crashed the stub on 1-byte outputs. DLPack hands the buffer over with its type and shape
and no numpy in between. Only string (BYTES) tensors still go through ``as_numpy``: DLPack has
no type for them. Imported by the Python-based backends inside Triton's stub only.
"""

from __future__ import annotations

import numpy as np


def to_numpy(tensor) -> np.ndarray:
    """A request tensor (``pb_utils.Tensor``) as a numpy array."""
    import torch

    try:
        return torch.utils.dlpack.from_dlpack(tensor.to_dlpack()).numpy()
    except Exception:  # noqa: BLE001 - BYTES (the stub raises its own type), or a type torch lacks
        return tensor.as_numpy()


def from_numpy(name: str, value: np.ndarray):
    """An output tensor (``pb_utils.Tensor``) of ``value``."""
    import torch
    import triton_python_backend_utils as pb_utils

    array = np.ascontiguousarray(value)
    if array.size == 0 or array.dtype == np.object_:  # DLPack: no strings, and an empty
        return pb_utils.Tensor(name, array)  # tensor counts as non-contiguous
    if not array.flags.writeable:
        array = array.copy()
    return pb_utils.Tensor.from_dlpack(name, torch.utils.dlpack.to_dlpack(torch.from_numpy(array)))
