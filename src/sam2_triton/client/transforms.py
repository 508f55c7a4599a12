"""SAM2's image, prompt and mask transforms in numpy: Meta's ``SAM2Transforms`` without torch.

Coordinate frames (as in Meta's ``sam2/utils/transforms.py``):

* **original frame**: pixels of the user's image, ``x`` to the right in ``[0, W]``, ``y`` down
  in ``[0, H]``; points and boxes are given here, masks are returned here.
* **input frame**: the 1024x1024 image the encoder sees (the original image stretched, not
  letterboxed); ``point_coords`` sent to the decoder are here: ``x * 1024 / W``, ``y * 1024 / H``.
* **low-res frame**: the decoder's 256x256 mask logits, the input frame divided by 4.

Every function matches its Meta counterpart to float32 rounding; the bounds measured by
``tests/test_client_transforms.py`` are stated on each.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sam2_triton.models import IMAGE_SIZE

#: ImageNet statistics SAM2 normalises with (RGB, on [0, 1] pixels).
PIXEL_MEAN = (0.485, 0.456, 0.406)
PIXEL_STD = (0.229, 0.224, 0.225)
#: Box corners are fed to the prompt encoder as two points with these labels.
BOX_LABELS = (2, 3)
#: The predictor clamps the low-res logits it returns for reuse as ``mask_input``.
MASK_LOGIT_CLAMP = 32.0


class Sam2Transforms:
    """numpy equivalent of ``sam2.utils.transforms.SAM2Transforms`` (no hole filling).

    ``resolution`` is the encoder's input side (1024), ``mask_threshold`` the logit above
    which a pixel is in the mask (0, as ``SAM2ImagePredictor``'s default).
    """

    def __init__(self, resolution: int = IMAGE_SIZE, mask_threshold: float = 0.0) -> None:
        self.resolution = resolution
        self.mask_threshold = mask_threshold
        self._mean = np.asarray(PIXEL_MEAN, np.float32).reshape(3, 1, 1)
        self._std = np.asarray(PIXEL_STD, np.float32).reshape(3, 1, 1)

    # --- image ----------------------------------------------------------------------------

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """``[H, W, 3]`` uint8 RGB (original frame) → ``[1, 3, 1024, 1024]`` float32 (input frame).

        Meta: ``ToTensor`` (÷255), torchvision ``Resize((1024, 1024))`` (bilinear *with*
        antialias on tensors: a triangle filter widened by the scale when shrinking, as
        Pillow's), ``Normalize(mean, std)``. Here each channel is resized as a Pillow
        ``F`` (float32) image with ``BILINEAR``, which is that same filter on float pixels,
        then scaled and normalised. Measured against Meta: max abs diff ≈ 1.4e-6 after
        normalisation (photos, 1x1 to 6000x4000, odd sizes, up- and downscaling).
        """
        from PIL import Image

        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 image, got {image.shape} {image.dtype}")
        size = (self.resolution, self.resolution)
        out = np.empty((1, 3, *size), np.float32)
        for c in range(3):
            channel = Image.fromarray(np.ascontiguousarray(image[..., c])).convert("F")
            if channel.size != size:
                channel = channel.resize(size, Image.Resampling.BILINEAR)
            out[0, c] = np.asarray(channel)
        out *= np.float32(1.0 / 255.0)
        out -= self._mean
        out /= self._std
        return out

    # --- prompts --------------------------------------------------------------------------

    def transform_coords(self, coords: np.ndarray, orig_hw: Sequence[int]) -> np.ndarray:
        """Points ``[..., 2]`` (x, y) in the original frame → the input frame, float32.

        ``x / W * 1024`` and ``y / H * 1024``, as ``SAM2Transforms.transform_coords`` with
        ``normalize=True``.
        """
        h, w = orig_hw
        out = np.array(coords, dtype=np.float32, copy=True)
        out[..., 0] = out[..., 0] / np.float32(w)
        out[..., 1] = out[..., 1] / np.float32(h)
        return out * np.float32(self.resolution)

    def transform_boxes(self, boxes: np.ndarray, orig_hw: Sequence[int]) -> np.ndarray:
        """Boxes ``[..., 4]`` (x0, y0, x1, y1), original frame → corners ``[B, 2, 2]``, input
        frame (``SAM2Transforms.transform_boxes``)."""
        return self.transform_coords(np.asarray(boxes, np.float32).reshape(-1, 2, 2), orig_hw)

    def prompt_tensors(
        self,
        points: np.ndarray | None,
        labels: np.ndarray | None,
        box: np.ndarray | None,
        orig_hw: Sequence[int],
    ) -> tuple[np.ndarray, np.ndarray]:
        """The decoder's ``point_coords`` ``[1, N, 2]`` and ``point_labels`` ``[1, N]`` (float32).

        ``points`` ``[P, 2]`` and ``box`` ``[4]`` are in the original frame, ``labels`` ``[P]``
        (default all 1). As
        ``SAM2ImagePredictor._predict`` does, the box becomes its two corners labelled 2 and 3,
        placed *before* the click points (N = P + 2 with a box, else P).
        """
        coords, point_labels = [], []
        if box is not None:
            coords.append(self.transform_boxes(box, orig_hw).reshape(-1, 2))
            point_labels.append(np.asarray(BOX_LABELS, np.float32))
        if points is not None and len(points):
            points = np.asarray(points).reshape(-1, 2)
            coords.append(self.transform_coords(points, orig_hw))
            if labels is None:  # all foreground
                labels = np.ones(len(points))
            point_labels.append(np.asarray(labels, np.float32).reshape(-1))
        if not coords:
            raise ValueError("need at least one point or a box")
        return (
            np.concatenate(coords)[None].astype(np.float32),
            np.concatenate(point_labels)[None].astype(np.float32),
        )

    # --- masks ----------------------------------------------------------------------------

    def postprocess_masks(self, low_res: np.ndarray, orig_hw: Sequence[int]) -> np.ndarray:
        """Low-res logits ``[M, 256, 256]`` → logits ``[M, H, W]`` float32 in the original frame.

        ``F.interpolate(mode="bilinear", align_corners=False)`` (no antialias, also when
        shrinking below 256), reproduced in float32 the way PyTorch's CPU kernel computes it
        (half-pixel source index, clamped at 0 and at the last row/column, fused
        multiply-add for the index). Measured against PyTorch: max abs diff ≤ 8e-6 on logits
        of magnitude ~40. ``cv2.resize(INTER_LINEAR)`` computes source positions in double
        precision and differs by up to ~1e-3 there, so it is not used.
        """
        low_res = np.asarray(low_res, np.float32)
        if low_res.ndim != 3:
            raise ValueError(f"expected [M, h, w] logits, got shape {low_res.shape}")
        h, w = int(orig_hw[0]), int(orig_hw[1])
        m, in_h, in_w = low_res.shape
        c0, c1, cw0, cw1 = _linear_indices_weights(in_w, w)
        r0, r1, rw0, rw1 = _linear_indices_weights(in_h, h)
        # Width first on the few low-res rows, then height: the same products and sums as
        # PyTorch's kernel, out = wh0 * (ww0 * x00 + ww1 * x01) + wh1 * (...).
        rows = low_res[:, :, c0] * cw0 + low_res[:, :, c1] * cw1  # [M, in_h, W]
        out = np.empty((m, h, w), np.float32)
        tmp = np.empty((h, w), np.float32)
        for k in range(m):
            np.multiply(rows[k, r0], rw0[:, None], out=out[k])
            np.multiply(rows[k, r1], rw1[:, None], out=tmp)
            out[k] += tmp
        return out

    def threshold(self, logits: np.ndarray) -> np.ndarray:
        """Binary masks (bool, same shape): ``logits > mask_threshold``."""
        return logits > self.mask_threshold


def clamp_low_res(low_res: np.ndarray) -> np.ndarray:
    """Clamp low-res logits to [-32, 32] as the predictor does before returning them."""
    return np.clip(low_res, -MASK_LOGIT_CLAMP, MASK_LOGIT_CLAMP).astype(np.float32)


def _linear_indices_weights(
    in_size: int, out_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of 1-D bilinear resampling, as PyTorch computes them.

    ``src = max(scale * (dst + 0.5) - 0.5, 0)`` with ``scale = in / out`` in float32 and the
    multiply-add rounded once (PyTorch's kernel is compiled with FMA contraction); then
    ``i0 = floor(src)``, ``i1 = min(i0 + 1, in - 1)``, ``w1 = src - i0``, ``w0 = 1 - w1``.
    """
    if in_size == out_size:
        idx = np.arange(out_size)
        return idx, idx, np.ones(out_size, np.float32), np.zeros(out_size, np.float32)
    scale = np.float32(in_size) / np.float32(out_size)
    dst = np.arange(out_size, dtype=np.float32) + np.float32(0.5)
    # float32 x float32 is exact in float64, so this is fma(scale, dst, -0.5) rounded once.
    src = (np.float64(scale) * dst.astype(np.float64) - 0.5).astype(np.float32)
    src = np.maximum(src, np.float32(0.0))
    i0 = np.minimum(src.astype(np.int64), in_size - 1)
    w1 = np.clip(src - i0.astype(np.float32), np.float32(0.0), np.float32(1.0))
    w0 = np.float32(1.0) - w1
    i1 = np.minimum(i0 + 1, in_size - 1)
    return i0, i1, w0.astype(np.float32), w1.astype(np.float32)
