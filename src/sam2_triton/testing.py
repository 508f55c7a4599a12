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

#: The occlusion head's output bias, in Meta's checkpoint.
OBJECT_SCORE_BIAS = "sam_mask_decoder.pred_obj_score_head.layers.2.bias"


#: The mask decoder's transposed convolutions that upsample its 64x64 embedding to the
#: 256x256 low-res masks (2x2 kernels, stride 2), in Meta's checkpoint.
UPSCALING_KERNELS = (
    "sam_mask_decoder.output_upscaling.0.weight",
    "sam_mask_decoder.output_upscaling.3.weight",
)


def save_random_checkpoint(
    model_size: str,
    path: str | os.PathLike,
    seed: int = 0,
    object_score_bias: float = 0.0,
    smooth_masks: bool = False,
) -> Path:
    """Build SAM2.1 ``model_size`` with seed ``seed`` and save it as a Meta-format checkpoint.

    ``object_score_bias`` is added to the occlusion head's last bias. Random-init SAM2 often
    scores "no object", and Meta's video predictor then replaces the whole mask by -1024
    (and tracks from that): a large bias keeps the objects present, so that video tests
    compare real mask logits, not that constant. Image prediction does not use the score.

    ``smooth_masks``: the four taps of each of the decoder's 2x2 upsampling kernels
    (:data:`UPSCALING_KERNELS`) are replaced by their mean. Random taps paint a 2-pixel
    checkerboard over every mask, so a random decoder's 1080p mask is speckle of 30,000 to
    240,000 runs; with equal taps the masks follow the 64x64 embedding and have several
    times fewer (base_plus on the benchmark's 1080p photo: 19,549 to 48,173, still about
    ten times a real object's outline; tiny's fewer). The networks' work is the same (only
    values change): benchmarks of what answers cost to count, send and read (run lengths,
    PNG files) use it as a smaller-answer stand-in for trained weights.
    """
    import torch
    from sam2.build_sam import build_sam2

    size = get_model_size(model_size)
    torch.manual_seed(seed)
    model = build_sam2(size.config, ckpt_path=None, device="cpu", mode="eval")
    if object_score_bias:
        with torch.no_grad():
            model.state_dict()[OBJECT_SCORE_BIAS].add_(object_score_bias)
    if smooth_masks:
        with torch.no_grad():
            for name in UPSCALING_KERNELS:
                kernel = model.state_dict()[name]  # [in, out, 2, 2]
                kernel.copy_(kernel.mean((2, 3), keepdim=True).expand_as(kernel))
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


def shifted_crops(image, count: int, size: tuple[int, int], step: tuple[int, int]) -> list:
    """``count`` crops of ``size`` (H, W) from ``image``, each ``step`` (dy, dx) pixels further
    than the one before: a video whose content moves, made from a real photo."""
    h, w = size
    dy, dx = step
    if (count - 1) * dy + h > image.shape[0] or (count - 1) * dx + w > image.shape[1]:
        raise ValueError(f"{count} crops of {size} stepping {step} leave the image")
    return [image[i * dy : i * dy + h, i * dx : i * dx + w].copy() for i in range(count)]
