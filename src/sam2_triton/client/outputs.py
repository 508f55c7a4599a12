"""Write masks, overlays and low-res logits to disk, atomically (temporary file + rename).

Masks are written as 8-bit single-channel PNGs, 255 inside and 0 outside, at the original
image size, so that any viewer shows them and ``load_image``-style tools read them back.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sam2_triton.files import write_bytes_atomic
from sam2_triton.models import UserError

#: Overlay colours (RGB) for masks, foreground and background clicks, and the box.
MASK_COLOUR = (30, 144, 255)
FOREGROUND_COLOUR = (0, 220, 0)
BACKGROUND_COLOUR = (230, 0, 0)
BOX_COLOUR = (255, 215, 0)


def rle_to_mask(rle: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """The ``[H, W]`` bool mask of COCO run lengths (``sam2_session``'s ``mask_rle``):
    alternating runs of 0s and 1s, starting with 0s, over the pixels in column-major order."""
    h, w = int(hw[0]), int(hw[1])
    rle = np.asarray(rle, np.int64)
    if rle.sum() != h * w:
        raise UserError(f"run lengths cover {int(rle.sum())} pixels, not {h}x{w}")
    values = np.zeros(len(rle), bool)
    values[1::2] = True
    return np.repeat(values, rle).reshape(w, h).T


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of a ``[H, W]`` uint8 gray or ``[H, W, 3]`` uint8 RGB image."""
    import cv2

    if image.ndim == 3:
        image = image[..., ::-1]  # OpenCV writes BGR
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(image))
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 gray/BGR array
        raise UserError("PNG encoding failed")
    return buf.tobytes()


def save_mask_png(path: str | os.PathLike, mask: np.ndarray) -> Path:
    """Save a ``[H, W]`` bool mask as an 8-bit PNG (0 outside, 255 inside)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected one [H, W] mask, got shape {mask.shape}")
    return write_bytes_atomic(path, encode_png(mask.astype(np.uint8) * 255))


def save_low_res(path: str | os.PathLike, low_res: np.ndarray) -> Path:
    """Save low-res logits ``[1, 256, 256]`` float32 as ``.npy`` (for ``--mask-input``)."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(low_res, np.float32).reshape(1, *np.shape(low_res)[-2:]))
    return write_bytes_atomic(path, buf.getvalue())


def load_low_res(path: str | os.PathLike) -> np.ndarray:
    """Read low-res logits written by :func:`save_low_res` (``[1, 256, 256]`` float32)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"mask input not found: {path}")
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise UserError(f"cannot read mask input {path} (expected a .npy array): {e}") from e
    return np.asarray(array, np.float32)


def overlay(
    image: np.ndarray,
    mask: np.ndarray | None,
    points: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    box: np.ndarray | None = None,
    alpha: float = 0.5,
) -> np.ndarray:
    """``image`` ``[H, W, 3]`` uint8 RGB with the mask tinted and outlined, foreground clicks
    as green and background clicks as red discs, and the box as a yellow rectangle
    (coordinates in the original frame). Returns a new ``[H, W, 3]`` uint8 RGB array."""
    import cv2

    out = image.copy()
    h, w = image.shape[:2]
    scale = max(1, round(max(h, w) / 500))
    if mask is not None and mask.any():
        tint = np.asarray(MASK_COLOUR, np.float32)
        region = out[mask].astype(np.float32)
        out[mask] = (region * (1 - alpha) + tint * alpha).round().astype(np.uint8)
        contours, _ = cv2.findContours(
            mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
        )
        cv2.drawContours(out, contours, -1, MASK_COLOUR, scale)
    if box is not None:
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        cv2.rectangle(out, (x0, y0), (x1, y1), BOX_COLOUR, 2 * scale)
    if points is not None:
        for (x, y), label in zip(points, labels if labels is not None else [1] * len(points)):
            colour = FOREGROUND_COLOUR if int(label) == 1 else BACKGROUND_COLOUR
            centre = (int(round(x)), int(round(y)))
            cv2.circle(out, centre, 5 * scale, colour, -1, cv2.LINE_AA)
            cv2.circle(out, centre, 5 * scale, (255, 255, 255), max(1, scale), cv2.LINE_AA)
    return out


def save_overlay(
    path: str | os.PathLike,
    image: np.ndarray,
    mask: np.ndarray | None,
    points: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    box: np.ndarray | None = None,
) -> Path:
    """Write :func:`overlay` as a PNG (or JPEG, by ``path``'s suffix) atomically."""
    import cv2

    picture = overlay(image, mask, points, labels, box)
    suffix = Path(path).suffix.lower()
    if suffix in (".jpg", ".jpeg"):
        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(picture[..., ::-1]))
        return write_bytes_atomic(path, buf.tobytes())
    return write_bytes_atomic(path, encode_png(picture))


def indexed_path(path: str | os.PathLike, index: int | None) -> Path:
    """``mask.png`` → ``mask_3.png`` for prompt set ``index`` (unchanged when None)."""
    path = Path(path)
    if index is None:
        return path
    return path.with_name(f"{path.stem}_{index}{path.suffix}")


def mask_file_names(count: int, prefix: str = "mask") -> Sequence[str]:
    """``mask_0.png`` ... for the masks of one prediction in ``--output-all``."""
    return [f"{prefix}_{i}.png" for i in range(count)]
