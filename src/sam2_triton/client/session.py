"""``Sam2Session``: the server holds the image; each click sends only its prompt.

>>> from sam2_triton.client import Sam2Client
>>> with Sam2Client("localhost:8000") as client:                 # doctest: +SKIP
...     with client.session("photo.jpg") as session:
...         first = session.predict(points=[[500, 375]])          # image + click, one request
...         better = session.predict(points=[[500, 375], [300, 200]], labels=[1, 0],
...                                  use_previous_mask=True)      # prompts only
...     better.masks.shape                                        # (1, H, W) bool

A session is a Triton sequence of the stateful model ``sam2_session``: the first request
carries the image file's bytes and starts the sequence; the server decodes, preprocesses and
encodes it and keeps the features on its device; every later request carries only the prompt
and gets masks at the original size. Each request also carries the session's id in the
``X-Sam2-Session`` header, so a proxy can route a session to the replica that holds it.

If the server no longer holds the image (idle timeout, evicted when full, server restarted,
another replica), the session starts again by itself: it sends the image with the prompt in a
new sequence. Only a prompt that refines the *server's* previous mask cannot be repeated that
way; it raises :class:`~sam2_triton.client.triton.SessionLost` (the session is started again,
so the next prompt works).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sam2_triton.client.images import as_rgb, image_size
from sam2_triton.client.outputs import encode_png, rle_to_mask
from sam2_triton.client.prompts import Prompt, make_prompt
from sam2_triton.client.triton import SessionLost
from sam2_triton.model_config import MAX_POINTS, SESSION
from sam2_triton.models import LOW_RES_MASK_SIZE, UserError

if TYPE_CHECKING:
    from sam2_triton.client.triton import TritonBackend

#: Outputs a prediction asks for unless told otherwise.
DEFAULT_OUTPUTS = ("masks", "iou_predictions")


def new_session_id() -> int:
    """A random session id below 2**53, so that JavaScript clients can hold one exactly."""
    return secrets.randbelow(2**53 - 1) + 1


def image_file_bytes(image: Any) -> tuple[bytes, tuple[int, int]]:
    """The bytes to send for ``image`` and its ``(H, W)`` as the server will see it.

    A path or ``bytes`` is sent as the file it is (the server decodes it, EXIF orientation
    applied, exactly as :func:`~sam2_triton.client.load_image` does); an array or PIL image is
    sent as a lossless PNG of its pixels.
    """
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise UserError(f"image not found: {path}")
        try:
            data = path.read_bytes()
        except OSError as e:
            raise UserError(f"cannot read image {path}: {e.strerror or e}") from e
        return data, image_size(data, f"image {path}")
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        return data, image_size(data, "image")
    rgb = as_rgb(image)
    return encode_png(rgb), (int(rgb.shape[0]), int(rgb.shape[1]))


@dataclass
class SessionPrediction:
    """Masks for one prompt, as the server computed them (original frame).

    ``masks`` ``[M, H, W]`` bool (M = 3 with multimask, else 1), ``iou_predictions`` ``[M]``;
    ``low_res_logits`` ``[M, 256, 256]`` (clamped, as Meta's predictor returns them),
    ``mask_png`` (the best mask as a PNG file) and ``mask_rle`` (the best mask's COCO run
    lengths) when asked for. ``round_trip_seconds`` is the request's time, client to client.
    """

    masks: np.ndarray | None
    iou_predictions: np.ndarray
    prompt: Prompt
    image_size: tuple[int, int] = (0, 0)
    low_res_logits: np.ndarray | None = None
    mask_png: bytes | None = None
    mask_rle: np.ndarray | None = None
    round_trip_seconds: float = 0.0
    restarted: bool = False

    @property
    def best_index(self) -> int:
        """Index of the mask with the highest predicted IoU."""
        return int(np.argmax(self.iou_predictions))

    @property
    def best_mask(self) -> np.ndarray:
        """``[H, W]`` bool: the highest-IoU mask (from ``masks``, or ``mask_rle``)."""
        if self.masks is not None:
            return self.masks[self.best_index]
        if self.mask_rle is not None:
            return rle_to_mask(self.mask_rle, self.image_size)
        raise UserError("this prediction asked for neither masks nor mask_rle")

    @property
    def areas(self) -> list[int]:
        """Pixels in each mask."""
        return [] if self.masks is None else [int(m.sum()) for m in self.masks]


class Sam2Session:
    """One image held by a ``sam2_session`` server; predict as often as you like, then close.

    ``image`` is a path, the file's bytes, or an ``[H, W, 3]`` uint8 RGB array. Nothing is sent
    until :meth:`start` or the first :meth:`predict` (which then carries the image too). Use as
    a context manager, or call :meth:`close`, to free the server's memory at once (otherwise
    the server drops the session after its idle timeout).
    """

    def __init__(
        self,
        backend: TritonBackend,
        image: Any,
        *,
        model: str = SESSION,
        session_id: int | None = None,
        max_points: int = MAX_POINTS,
    ) -> None:
        self.backend = backend
        self.model = model
        self.image_bytes, self.image_size = image_file_bytes(image)
        self.session_id = session_id if session_id is not None else new_session_id()
        self.max_points = max_points
        self.started = False
        self.restarts = 0
        self.start_seconds = 0.0

    # --- requests ------------------------------------------------------------------------------

    def start(self) -> tuple[int, int]:
        """Send the image alone; return its ``(H, W)`` as the server decoded it."""
        answer = self._send({}, ("image_size",))
        return self.image_size if answer is None else tuple(int(v) for v in answer["image_size"])

    def predict(
        self,
        points: Any = None,
        labels: Any = None,
        box: Any = None,
        *,
        multimask: bool = False,
        use_previous_mask: bool = False,
        mask_input: Any = None,
        outputs: tuple[str, ...] = DEFAULT_OUTPUTS,
    ) -> SessionPrediction:
        """Masks for a prompt on this session's image (the first call also sends the image).

        ``points`` ``[[x, y], ...]`` and ``box`` ``[x0, y0, x1, y1]`` are pixels of the
        original image, ``labels`` 1/0 per point (default all 1). ``use_previous_mask``
        refines with the best mask of the previous prediction, which the server kept;
        ``mask_input`` sends low-res logits instead (``[256, 256]``, e.g. an earlier
        ``low_res_logits[i]``). ``outputs``: any of ``masks``, ``iou_predictions``,
        ``low_res_masks``, ``mask_png``, ``mask_rle`` (``iou_predictions`` is always asked
        for; ``mask_rle`` alone is the lightest answer for interactive use).
        """
        if use_previous_mask and mask_input is not None:
            raise UserError("give either use_previous_mask or mask_input, not both")
        prompt = make_prompt(
            self.image_size, points, labels, box, mask_input, max_points=self.max_points
        )
        inputs: dict[str, np.ndarray] = {}
        if prompt.points is not None:
            inputs["point_coords"] = prompt.points
            inputs["point_labels"] = prompt.labels
        if prompt.box is not None:
            inputs["box"] = prompt.box
        if prompt.mask_input is not None:
            side = LOW_RES_MASK_SIZE
            inputs["mask_input"] = prompt.mask_input.reshape(side, side)
        inputs["multimask_output"] = np.array([multimask])
        if use_previous_mask:
            inputs["use_previous_mask"] = np.array([True])
        wanted = tuple(dict.fromkeys(("iou_predictions", *outputs)))
        restarts = self.restarts
        t0 = time.perf_counter()
        answer = self._send(inputs, wanted, refines=use_previous_mask)
        png = answer.get("mask_png")
        return SessionPrediction(
            masks=answer["masks"].astype(bool) if "masks" in answer else None,
            iou_predictions=np.asarray(answer["iou_predictions"], np.float32),
            prompt=prompt,
            image_size=self.image_size,
            low_res_logits=answer.get("low_res_masks"),
            mask_png=None if png is None else png.tobytes(),
            mask_rle=answer.get("mask_rle"),
            round_trip_seconds=time.perf_counter() - t0,
            restarted=self.restarts > restarts,
        )

    def _send(
        self, inputs: dict[str, np.ndarray], outputs: tuple[str, ...], refines: bool = False
    ) -> dict[str, np.ndarray]:
        """One request; the first carries the image. A session the server lost is started
        again in a new sequence (once), unless the request refines its previous mask."""
        try:
            return self._request(inputs, outputs)
        except SessionLost as e:
            if not self.started:
                raise
            self.started = False
            self.session_id = new_session_id()
            self.restarts += 1
            if refines:
                self._request({}, ("image_size",))  # the next prompt works again
                raise SessionLost(
                    f"{e}; the session was started again with the image, but the previous "
                    "mask is gone: predict once without use_previous_mask"
                ) from None
            return self._request(inputs, outputs)

    def _request(self, inputs: dict[str, np.ndarray], outputs: tuple[str, ...]) -> dict:
        starting = not self.started
        if starting:
            inputs = {"image_bytes": np.frombuffer(self.image_bytes, np.uint8), **inputs}
        t0 = time.perf_counter()
        answer = self.backend.infer_session(
            self.model, inputs, outputs, session_id=self.session_id, start=starting
        )
        if starting:
            self.started = True
            self.start_seconds = time.perf_counter() - t0
        return answer

    # --- life cycle ----------------------------------------------------------------------------

    def close(self) -> None:
        """End the session on the server (its memory is freed at once). Idempotent; a server
        that is gone already is not an error."""
        if not self.started:
            return
        self.started = False
        # A server that dropped the session already, or is down, holds nothing for us.
        with contextlib.suppress(UserError):
            self.backend.infer_session(self.model, {}, (), session_id=self.session_id, end=True)

    def __enter__(self) -> Sam2Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
