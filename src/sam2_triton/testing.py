"""Stand-ins for Meta's weights where they cannot be downloaded: tests, CI, benchmarks.

A seeded random-init SAM2.1 saved in Meta's checkpoint format (``{"model": state_dict}``)
goes through exactly the same load, export and serving path as the real checkpoints.
Speed does not depend on the weights' values, so benchmarks may use these too; masks do.
"""

from __future__ import annotations

import os
from pathlib import Path

from sam2_triton.files import atomic_path
from sam2_triton.models import get_model_size


def save_random_checkpoint(model_size: str, path: str | os.PathLike, seed: int = 0) -> Path:
    """Build SAM2.1 ``model_size`` with seed ``seed`` and save it as a Meta-format checkpoint."""
    import torch
    from sam2.build_sam import build_sam2

    size = get_model_size(model_size)
    torch.manual_seed(seed)
    model = build_sam2(size.config, ckpt_path=None, device="cpu", mode="eval")
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save({"model": model.state_dict()}, tmp)
    return path


def photos() -> dict[str, "object"]:
    """Real RGB photos of several shapes (HxWx3 uint8) that scikit-image ships."""
    from skimage import data

    return {
        "astronaut": data.astronaut(),  # 512 x 512
        "coffee": data.coffee(),  # 400 x 600, landscape
        "chelsea": data.chelsea(),  # 300 x 451, odd width
    }
