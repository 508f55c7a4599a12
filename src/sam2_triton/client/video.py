"""``Sam2VideoSession``: track objects through a video on a ``sam2_video`` server.

>>> from sam2_triton.client import Sam2Client
>>> with Sam2Client("localhost:8001", "grpc") as client:                  # doctest: +SKIP
...     with client.video_session() as video:
...         video.add_frames(sorted(Path("frames").glob("*.jpg")))        # files as they are
...         first = video.add_prompt(0, object_id=1, points=[[210, 350]], labels=[1])
...         video.add_prompt(0, object_id=2, box=[300, 0, 500, 400])
...         for frame in video.propagate():                               # every frame from 0 on
...             frame.masks.shape                                         # (2, H, W) bool

A video is a Triton sequence of the stateful model ``sam2_video``, which runs Meta's
``SAM2VideoPredictor`` on the server: frames travel once, as image files (a path's bytes as
they are; an array as a lossless PNG), in requests of ``frames_per_request``; prompts are
Meta's ``add_new_points_or_box`` / ``add_new_mask`` (pixels of the frame as stored: the
server, like Meta's video loader, applies no EXIF orientation); :meth:`propagate` is
``propagate_in_video``, its frames coming back a few per request. Every request carries the
video's id in the ``X-Sam2-Session`` header (routing to the replica that holds it).

A video the server no longer holds (idle timeout, evicted, server restarted) cannot be
resumed: its tracking state is gone. Requests then raise
:class:`~sam2_triton.client.triton.SessionLost`; start a new video session. Video requests
are never retried (a repeated request would append its frames twice).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sam2_triton.client.images import as_rgb
from sam2_triton.client.outputs import encode_png
from sam2_triton.client.prompts import make_prompt
from sam2_triton.client.session import new_session_id
from sam2_triton.client.triton import SessionLost
from sam2_triton.model_config import MAX_POINTS, VIDEO, VIDEO_OUTPUT_TENSORS
from sam2_triton.models import UserError

if TYPE_CHECKING:
    from sam2_triton.client.triton import TritonBackend

#: What a video request asks for: every output of the contract.
_OUTPUTS = tuple(name for name, _, _ in VIDEO_OUTPUT_TENSORS)


@dataclass
class VideoFrameMasks:
    """Every object's mask on one frame, as Meta's predictor yields them.

    ``masks`` ``[O, H, W]`` bool at the frame's original size, one per ``object_ids``;
    ``object_scores`` ``[O]`` the occlusion head's logits (> 0: visible; -1024 for an object
    that has no output on this frame yet).
    """

    frame_index: int
    object_ids: list[int]
    masks: np.ndarray
    object_scores: np.ndarray

    def mask(self, object_id: int) -> np.ndarray:
        """``[H, W]`` bool: the mask of ``object_id``."""
        try:
            return self.masks[self.object_ids.index(object_id)]
        except ValueError:
            raise UserError(
                f"object {object_id} is not in this video ({self.object_ids})"
            ) from None


def frame_file_bytes(frame: Any) -> bytes:
    """The bytes to send for one frame: a path's file as it is, ``bytes`` as they are, an
    ``[H, W, 3]`` uint8 RGB array (or PIL image) as a lossless PNG."""
    if isinstance(frame, (str, os.PathLike)):
        path = Path(frame)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise UserError(f"frame not found: {path}") from None
        except OSError as e:
            raise UserError(f"cannot read frame {path}: {e.strerror or e}") from None
    if isinstance(frame, (bytes, bytearray, memoryview)):
        return bytes(frame)
    return encode_png(as_rgb(frame))


class Sam2VideoSession:
    """One video held by a ``sam2_video`` server: add frames, prompt, propagate, close.

    Nothing is sent until the first :meth:`add_frames`, which starts the video. Use as a
    context manager, or call :meth:`close`, to free the server's memory at once (otherwise
    the server drops the video after its idle timeout).
    """

    def __init__(
        self,
        backend: TritonBackend,
        *,
        model: str = VIDEO,
        session_id: int | None = None,
        frames_per_request: int = 8,
        max_points: int = MAX_POINTS,
    ) -> None:
        if frames_per_request < 1:
            raise UserError("frames_per_request must be ≥ 1")
        self.backend = backend
        self.model = model
        self.session_id = session_id if session_id is not None else new_session_id()
        self.frames_per_request = frames_per_request
        self.max_points = max_points
        self.started = False
        self.frame_count = 0
        self.video_size: tuple[int, int] | None = None
        self.object_ids: list[int] = []

    # --- requests ------------------------------------------------------------------------------

    def add_frames(self, frames: Iterable[Any]) -> int:
        """Append frames (paths, encoded file bytes, or RGB arrays) to the video, in order, a
        few per request; the video's frame count afterwards."""
        batch: list[bytes] = []
        for frame in frames:
            batch.append(frame_file_bytes(frame))
            if len(batch) == self.frames_per_request:
                self._send({"frames": np.array(batch, dtype=np.object_)}, ())
                batch = []
        if batch:
            self._send({"frames": np.array(batch, dtype=np.object_)}, ())
        return self.frame_count

    def add_prompt(
        self,
        frame: int,
        object_id: int,
        points: Any = None,
        labels: Any = None,
        box: Any = None,
        *,
        clear_old_points: bool = True,
    ) -> VideoFrameMasks:
        """Meta's ``add_new_points_or_box``: points ``[[x, y], ...]`` (labels 1/0, default all
        1) and/or a box ``[x0, y0, x1, y1]`` in pixels of ``frame``, for ``object_id`` (a new
        id starts a new object). Returns every object's mask on that frame."""
        self._check_frame(frame)
        prompt = make_prompt(self.video_size, points, labels, box, max_points=self.max_points)
        inputs: dict[str, np.ndarray] = {
            "frame_index": np.array([frame]),
            "object_id": np.array([object_id]),
            "clear_old_points": np.array([clear_old_points]),
        }
        if prompt.points is not None:
            inputs["point_coords"] = prompt.points
            inputs["point_labels"] = prompt.labels
        if prompt.box is not None:
            inputs["box"] = prompt.box
        return self._frames(self._send(inputs, _OUTPUTS))[0]

    def add_mask(self, frame: int, object_id: int, mask: Any) -> VideoFrameMasks:
        """Meta's ``add_new_mask``: a ``[H, W]`` boolean mask of ``object_id`` on ``frame``."""
        self._check_frame(frame)
        mask = np.asarray(mask)
        if mask.ndim != 2:
            raise UserError(f"mask must be one [height, width] mask, got shape {mask.shape}")
        inputs = {
            "frame_index": np.array([frame]),
            "object_id": np.array([object_id]),
            "mask": mask.astype(bool),
        }
        return self._frames(self._send(inputs, _OUTPUTS))[0]

    def remove_object(self, object_id: int) -> list[int]:
        """Meta's ``remove_object``: forget ``object_id`` everywhere; the remaining ids."""
        inputs = {"object_id": np.array([object_id]), "remove_object": np.array([True])}
        self._send(inputs, ("object_ids",))
        return list(self.object_ids)

    def propagate(
        self,
        start_frame: int | None = None,
        *,
        reverse: bool = False,
        max_frames: int | None = None,
        frames_per_response: int = 8,
    ) -> Iterator[VideoFrameMasks]:
        """Meta's ``propagate_in_video``: every object's masks on each frame from
        ``start_frame`` (default: the earliest prompted frame) to the last frame sent (to
        frame 0 with ``reverse``), at most ``max_frames`` frames. The server tracks
        ``frames_per_response`` frames per request; they are yielded as they arrive."""
        if start_frame is not None:
            self._check_frame(start_frame)
        if frames_per_response < 1 or (max_frames is not None and max_frames < 1):
            raise UserError("frames_per_response and max_frames must be ≥ 1")
        start, done = start_frame, 0
        while max_frames is None or done < max_frames:
            ask = (
                frames_per_response
                if max_frames is None
                else min(frames_per_response, max_frames - done)
            )
            inputs = {"propagate": np.array([True]), "max_frames": np.array([ask])}
            if start is not None:
                inputs["start_frame"] = np.array([start])
            if reverse:
                inputs["reverse"] = np.array([True])
            frames = self._frames(self._send(inputs, _OUTPUTS))
            yield from frames
            done += len(frames)
            if not frames:
                return
            last = frames[-1].frame_index
            if (last == 0) if reverse else (last >= self.frame_count - 1):
                return
            start = last - 1 if reverse else last + 1

    def _send(self, inputs: dict[str, np.ndarray], outputs: tuple[str, ...]) -> dict:
        outputs = tuple(dict.fromkeys((*outputs, "frame_count", "video_size", "object_ids")))
        starting = not self.started
        if starting and "frames" not in inputs:
            raise UserError("send the video's first frames (add_frames) before anything else")
        try:
            answer = self.backend.infer_session(
                self.model,
                inputs,
                outputs,
                session_id=self.session_id,
                start=starting,
                retry=False,
            )
        except SessionLost as e:
            self.started = False
            raise SessionLost(
                f"{e}; the video's frames and tracking are gone from the server: start a new "
                "video session"
            ) from None
        self.started = True
        self.frame_count = int(answer["frame_count"][0])
        self.video_size = tuple(int(v) for v in answer["video_size"])
        self.object_ids = [int(v) for v in answer["object_ids"]]
        return answer

    def _frames(self, answer: dict) -> list[VideoFrameMasks]:
        ids = [int(v) for v in answer["object_ids"]]
        return [
            VideoFrameMasks(int(f), ids, masks.astype(bool), np.asarray(scores, np.float32))
            for f, masks, scores in zip(
                answer["frame_indices"], answer["masks"], answer["object_scores"]
            )
        ]

    def _check_frame(self, frame: int) -> None:
        if not self.started:
            raise UserError("send the video's first frames (add_frames) before prompting")
        if not 0 <= int(frame) < self.frame_count:
            raise UserError(
                f"frame {frame} has not been sent: the video has {self.frame_count} frames "
                f"(0 to {self.frame_count - 1})"
            )

    # --- life cycle ----------------------------------------------------------------------------

    def close(self) -> None:
        """End the video on the server (its memory is freed at once). Idempotent; a server
        that is gone already is not an error."""
        if not self.started:
            return
        self.started = False
        with contextlib.suppress(UserError):
            self.backend.infer_session(
                self.model, {}, (), session_id=self.session_id, end=True, retry=False
            )

    def __enter__(self) -> Sam2VideoSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
