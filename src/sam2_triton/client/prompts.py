"""Check a user's prompts (points, labels, box, previous mask) before anything is sent.

Everything is in the **original frame** (pixels of the user's image, see ``transforms``).
Each problem is a :class:`UserError` whose message says what is wrong and with which value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sam2_triton.model_config import MAX_POINTS
from sam2_triton.models import LOW_RES_MASK_SIZE, UserError


@dataclass(frozen=True)
class Prompt:
    """One validated prompt set for one image.

    ``points`` ``[P, 2]`` float32 (x, y) and ``box`` ``[4]`` float32 (x0, y0, x1, y1) are in
    the original frame; ``labels`` ``[P]`` int32 (1 foreground, 0 background);
    ``mask_input`` ``[1, 1, 256, 256]`` float32 low-res logits of an earlier prediction.
    """

    points: np.ndarray | None
    labels: np.ndarray | None
    box: np.ndarray | None
    mask_input: np.ndarray | None

    @property
    def num_points(self) -> int:
        """Points the decoder gets: the clicks plus two corners for a box."""
        return (0 if self.points is None else len(self.points)) + (0 if self.box is None else 2)

    def to_json(self) -> dict[str, Any]:
        """A JSON-friendly summary (no mask)."""
        out: dict[str, Any] = {}
        if self.points is not None:
            out["points"] = self.points.tolist()
            out["labels"] = self.labels.tolist() if self.labels is not None else None
        if self.box is not None:
            out["box"] = self.box.tolist()
        out["mask_input"] = self.mask_input is not None
        return out


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _numbers(value: Any, what: str) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise UserError(f"{what} must be numbers, got {value!r}") from None
    if not np.all(np.isfinite(array)):
        raise UserError(f"{what} must be finite numbers, got {array.tolist()}")
    return array


def make_prompt(
    orig_hw: Sequence[int],
    points: Any = None,
    labels: Any = None,
    box: Any = None,
    mask_input: Any = None,
    max_points: int = MAX_POINTS,
) -> Prompt:
    """Validate a prompt set for an image of ``orig_hw`` = (H, W) and return it as arrays.

    ``points``: ``[[x, y], ...]`` (or one ``[x, y]``) inside the image, ``0 <= x <= W`` and
    ``0 <= y <= H``; ``labels``: one 0/1 per point (default: all 1, foreground); ``box``:
    ``[x0, y0, x1, y1]`` inside the image with ``x0 < x1`` and ``y0 < y1``; ``mask_input``:
    ``[256, 256]`` (or ``[1, 256, 256]``, ``[1, 1, 256, 256]``) low-res logits, e.g.
    ``Prediction.low_res_logits[i]``. At least one point or a box; at most ``max_points``
    points in all, a box counting as two.
    """
    h, w = int(orig_hw[0]), int(orig_hw[1])
    pts = lab = bx = mask = None
    if points is not None:
        pts = _numbers(points, "points")
        if pts.ndim == 1 and pts.size == 2:
            pts = pts[None]
        if pts.size == 0:
            pts = None
        elif pts.ndim != 2 or pts.shape[1] != 2:
            raise UserError(f"points must be a list of (x, y) pairs, got shape {pts.shape}")
    if pts is not None:
        for i, (x, y) in enumerate(pts):
            if not (0 <= x <= w and 0 <= y <= h):
                raise UserError(
                    f"point {i + 1} ({x:g}, {y:g}) is outside the image: "
                    f"x must be in 0..{w} and y in 0..{h} (the image is {w}x{h})"
                )
        if labels is None:
            lab = np.ones(len(pts), np.int32)
        else:
            lab = _numbers(labels, "labels").reshape(-1)
            if len(lab) != len(pts):
                raise UserError(
                    f"{_count(len(lab), 'label')} for {_count(len(pts), 'point')}: "
                    "give one label per point"
                )
            bad = [v for v in lab.tolist() if v not in (0, 1)]
            if bad:
                raise UserError(f"labels must be 1 (foreground) or 0 (background), got {bad[0]:g}")
            lab = lab.astype(np.int32)
    elif labels is not None and np.asarray(labels).size:
        raise UserError("labels given without points")
    if box is not None:
        bx = _numbers(box, "box").reshape(-1)
        if bx.size != 4:
            raise UserError(f"box must be 4 numbers x0,y0,x1,y1, got {bx.size}")
        x0, y0, x1, y1 = bx.tolist()
        if not (x0 < x1 and y0 < y1):
            raise UserError(f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) must have x0 < x1 and y0 < y1")
        if not (x0 >= 0 and x1 <= w and y0 >= 0 and y1 <= h):
            raise UserError(
                f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) is outside the image: "
                f"x must be in 0..{w} and y in 0..{h} (the image is {w}x{h})"
            )
    if pts is None and bx is None:
        raise UserError("give at least one point or a box")
    if mask_input is not None:
        mask = _numbers(mask_input, "mask_input").astype(np.float32)
        side = LOW_RES_MASK_SIZE
        if mask.size != side * side or mask.shape[-2:] != (side, side):
            raise UserError(
                f"mask_input must be {side}x{side} low-res logits (a previous prediction's "
                f"low_res_logits), got shape {mask.shape}"
            )
        mask = mask.reshape(1, 1, side, side)
    prompt = Prompt(
        points=None if pts is None else pts.astype(np.float32),
        labels=lab,
        box=None if bx is None else bx.astype(np.float32),
        mask_input=mask,
    )
    if prompt.num_points > max_points:
        raise UserError(
            f"too many points: {prompt.num_points} (a box counts as 2); the server takes at "
            f"most {max_points}"
        )
    return prompt
