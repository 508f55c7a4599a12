"""Video sessions: SAM2.1 object tracking, Meta's ``SAM2VideoPredictor`` fed frame by frame.

:class:`VideoSessionEngine` is what one ``sam2_video`` model instance runs, independent of
Triton (``sam2_triton/backend/sam2_video/model.py`` only translates tensors), so it is tested
in-process against Meta's predictor as well as over the wire.

**Meta's own code does the tracking.** Each video holds an ``inference_state`` exactly as
``SAM2VideoPredictor.init_state`` builds it, and requests call the predictor's public methods
on it: ``add_new_points_or_box``, ``add_new_mask``, ``remove_object``,
``propagate_in_video_preflight`` and ``propagate_in_video``. Only the frames differ:
``init_state`` loads a whole folder at once, here they arrive in requests and are appended
(:class:`FrameList`). Memory attention, memory
encoder, object pointers, occlusion head and the video mask decoder run in PyTorch; SETUP.md
("Video tracking") says why not through exported ONNX graphs.

Frames are decoded as Meta's loader does (``sam2/utils/misc.py``, ``_load_img_as_tensor``):
``PIL.Image.open``, ``convert("RGB").resize((S, S))`` (S = the model's ``image_size``,
1024), ÷255 and the ImageNet mean/std. No EXIF orientation is applied, as there: masks are
in the frame as stored, and the video's size is the first frame's ``(H, W)``.

What a video holds, and where (:func:`video_state_bytes` gives the bound):

* each frame resized to S×S, uint8 RGB, on the **host** (3·S² bytes: 3 MiB at 1024);
  normalised on the instance's device when the tracker reads it;
* per object and tracked frame, on the **device**: the memory features (bfloat16,
  ``[64, S/16, S/16]``), the low-res mask logits (float32, ``[S/4, S/4]``), the object
  pointer (``[256]``) and the object score, as Meta's predictor keeps them (769 KiB at 1024);
* per video, on the device: the image features of the most recently used frame (Meta caches
  one) and the memory position encoding; while a propagation runs, the features of up to
  ``feature_batch`` frames (:class:`FeatureBatches`).

The frame count is what has arrived so far: ``inference_state["num_frames"]`` follows it, so
tracking after every frame is sent equals Meta's predictor on the whole video; a frame
tracked while later frames are still to come sees the video as it was then (for videos of
fewer than 16 frames that changes how Meta weighs its object pointers).
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import threading
import time
import warnings
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sam2_triton.client.prompts import Prompt, make_prompt
from sam2_triton.client.transforms import PIXEL_MEAN, PIXEL_STD
from sam2_triton.model_config import (
    MAX_POINTS,
    TORCH_COMPILE_MODES,
    VIDEO_OUTPUT_TENSORS,
    VideoServing,
)
from sam2_triton.models import IMAGE_SIZE, ModelSize, UserError
from sam2_triton.sessions.image import RequestError
from sam2_triton.sessions.runtime import IdleRelease, make_current
from sam2_triton.sessions.store import SessionStore, StoreFull, why_missing_in_words

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

#: The outputs a video request may ask for (the wire contract).
VIDEO_OUTPUTS = tuple(name for name, _, _ in VIDEO_OUTPUT_TENSORS)
#: The object score Meta's predictor gives an object without an output on a frame (and the
#: logit it fills that object's mask with): ``sam2.modeling.sam2_base.NO_OBJ_SCORE``.
NO_OBJECT_SCORE = -1024.0
#: Precisions of the tracker: float32, or bfloat16 autocast on a GPU (as Meta's own
#: benchmark and notebooks run it).
PRECISIONS = ("float32", "bfloat16")
#: Channels of SAM2's memory features and of its object pointers (every SAM2.1 size).
MEMORY_DIM = 64
POINTER_DIM = 256


@dataclass(frozen=True)
class VideoLimits:
    """What one instance accepts and keeps.

    ``max_videos`` live videos per instance (the least recently used is evicted when a new
    one arrives at a full instance); ``idle_timeout_s`` after its last request a video is
    dropped. A video has at most ``max_frames`` frames and ``max_objects`` objects; a frame
    at most ``max_frame_pixels`` pixels and ``max_frame_bytes`` bytes as sent; a request
    at most ``max_frames_per_request`` frames; a prompt at most ``max_points`` points. A
    propagation answers at most ``max_frames_per_response`` frames per request, fewer when
    their masks would exceed ``max_response_bytes``. At most ``max_mask_prompts`` mask
    prompts are kept per video (each holds an S×S float32 mask). ``decode_threads`` decode
    the frames of one request in parallel; a propagation encodes ``feature_batch`` frames per
    run of the image encoder and, with ``batch_objects``, tracks the objects of a frame in
    one run of the tracker where their memories line up (:class:`ObjectBatches`). On a GPU,
    after ``memory_release_idle_s`` without requests, the memory a propagation left in
    torch's cache goes back to the device (:class:`~sam2_triton.sessions.runtime.IdleRelease`;
    0: never). The defaults are those the generated config writes
    (:class:`~sam2_triton.model_config.VideoServing`).
    """

    max_videos: int = VideoServing.max_videos
    idle_timeout_s: float = float(VideoServing.idle_timeout_s)
    max_frames: int = VideoServing.max_frames
    max_objects: int = VideoServing.max_objects
    max_frame_pixels: int = VideoServing.max_frame_pixels
    max_frame_bytes: int = VideoServing.max_frame_bytes
    max_frames_per_request: int = VideoServing.max_frames_per_request
    max_frames_per_response: int = VideoServing.max_frames_per_response
    max_response_bytes: int = VideoServing.max_response_bytes
    max_points: int = MAX_POINTS
    max_mask_prompts: int = VideoServing.max_mask_prompts
    decode_threads: int = VideoServing.decode_threads
    feature_batch: int = VideoServing.feature_batch
    batch_objects: bool = VideoServing.batch_objects
    memory_release_idle_s: float = VideoServing.memory_release_idle_s


@dataclass
class VideoRequest:
    """One request of a video, as the wire contract defines it (original-frame pixels).

    In one request, in this order: ``frames`` (encoded image files) are appended to the
    video; ``remove_object`` removes ``object_id``; a prompt on frame ``frame_index`` for
    ``object_id`` (``points`` ``[P, 2]`` x, y with ``labels`` ``[P]`` 1/0 and/or ``box``
    ``[x0, y0, x1, y1]``, as ``add_new_points_or_box``; or ``mask`` ``[h, w]`` bool, as
    ``add_new_mask``) is added; or, instead of a prompt, ``propagate`` tracks every object
    from ``start_frame`` (default: the earliest prompted frame), at most ``max_frames``
    frames, backwards with ``reverse``.
    """

    session_id: Hashable
    start: bool = False
    end: bool = False
    frames: Sequence[bytes] = ()
    frame_index: int | None = None
    object_id: int | None = None
    points: np.ndarray | None = None
    labels: np.ndarray | None = None
    box: np.ndarray | None = None
    mask: np.ndarray | None = None
    clear_old_points: bool = True
    remove_object: bool = False
    propagate: bool = False
    start_frame: int | None = None
    max_frames: int | None = None
    reverse: bool = False
    outputs: frozenset[str] = frozenset(VIDEO_OUTPUTS)

    @property
    def has_prompt(self) -> bool:
        return self.points is not None or self.box is not None or self.mask is not None


@dataclass
class VideoAnswer:
    """What a request gets back.

    ``frame_indices`` ``[F]``: the frames whose masks follow (the prompted frame, or the
    frames a propagation tracked, in its order; none otherwise); ``object_ids`` ``[O]``
    every object of the video, in the order Meta's predictor keeps them; ``masks``
    ``[F, O, H, W]`` uint8 0/1 at the original size; ``object_scores`` ``[F, O]`` the
    occlusion head's logits (> 0: the object is visible; -1024 for an object with no output
    on that frame yet); ``frame_count`` frames the video has; ``video_size`` (H, W).
    """

    frame_count: int
    video_size: tuple[int, int]
    object_ids: np.ndarray
    frame_indices: np.ndarray
    masks: np.ndarray
    object_scores: np.ndarray


def video_state_bytes(
    image_size: int,
    frames: int,
    objects: int,
    *,
    max_points: int = MAX_POINTS,
    mask_prompts: int = 0,
    feature_batch: int = 1,
) -> tuple[int, int]:
    """``(device, host)`` bytes a video of ``frames`` frames and ``objects`` objects holds at
    most, the model's input side being ``image_size`` (S), as Meta's predictor keeps them.

    Host: each frame as S×S×3 uint8. Device, per object and tracked frame: memory features
    (bfloat16 ``[64, S/16, S/16]``), low-res mask logits (float32 ``[S/4, S/4]``), object
    pointer (float32 ``[256]``) and score; a prompted frame further keeps, until the next
    propagation, the prompt's own output (logits, pointer, score) and its points (at most
    ``max_points``, 12 bytes each). Each of ``mask_prompts`` mask prompts keeps the mask at
    S×S float32. Per video: the cached features of one frame (the normalised image and the
    three backbone levels, float32), of ``feature_batch`` frames while a propagation runs,
    the levels' position encodings (one copy: they depend on the shape alone) and the memory
    position encoding.
    """
    s = image_size
    logits_pointer_score = 4 * (s // 4) ** 2 + 4 * POINTER_DIM + 4
    tracked = 2 * MEMORY_DIM * (s // 16) ** 2 + logits_pointer_score
    prompted = logits_pointer_score + 12 * max_points
    # backbone_fpn after conv_s0/conv_s1: 32 ch at S/4, 64 at S/8, 256 at S/16; each level's
    # position encoding has 256 channels.
    levels = ((32, s // 4), (64, s // 8), (256, s // 16))
    per_frame = 4 * (3 * s * s + sum(c * side * side for c, side in levels))
    cached = max(1, feature_batch) * per_frame + 4 * sum(256 * side * side for _, side in levels)
    constants = 4 * MEMORY_DIM * (s // 16) ** 2
    device = cached + constants + objects * frames * (tracked + prompted) + mask_prompts * 4 * s * s
    return device, frames * 3 * s * s


def tracked_bytes(image_size: int) -> int:
    """Device bytes of one object on one tracked frame (769 KiB at 1024)."""
    s = image_size
    return 2 * MEMORY_DIM * (s // 16) ** 2 + 4 * (s // 4) ** 2 + 4 * POINTER_DIM + 4


def missing_video_message(session_id: Hashable, why: str | None) -> str:
    """The 400 for a request to a video this instance does not hold."""
    reason = why_missing_in_words(why, "videos")
    return (
        f"video {session_id} has no frames on this server ({reason}): start a new video "
        "session and send its frames again"
    )


# --- frames ---------------------------------------------------------------------------------


def decode_frame(
    data: bytes, image_size: int, max_pixels: int, name: str = "frame"
) -> tuple[np.ndarray, tuple[int, int]]:
    """An encoded image file → (``[S, S, 3]`` uint8 RGB resized as Meta's video loader does,
    the file's ``(H, W)``). :class:`RequestError` for anything Pillow cannot read, or more
    than ``max_pixels`` pixels (refused from the header, before decoding)."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise RequestError(f"cannot read {name}: the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_pixels:
                raise RequestError(
                    f"{name} is {w}x{h} ({w * h / 1e6:.1f} MP); at most {max_pixels / 1e6:g} MP "
                    "are accepted"
                )
            # Exactly sam2/utils/misc.py's _load_img_as_tensor (Pillow's default filter).
            resized = img.convert("RGB").resize((image_size, image_size))
            return np.array(resized), (h, w)  # a writable copy, as torch wants
    except RequestError:
        raise
    except UnidentifiedImageError:
        raise RequestError(f"cannot read {name}: not an image file") from None
    except Exception as e:  # noqa: BLE001 - Pillow raises many types for corrupt data
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RequestError(f"cannot read {name}: {text}") from None


class FrameList:
    """A video's frames as Meta's ``inference_state["images"]``: ``frames[i]`` is frame i,
    ``[3, S, S]`` float32 normalised on the device, made on demand from the S×S uint8 frame
    kept on the host.

    Meta computes ``float32(float64(v) / 255)``, then subtracts the mean and divides by the
    standard deviation in float32. A 3×256 table holds exactly those values for every byte,
    so the normalised frame is a lookup, bit for bit the same (tested).
    """

    def __init__(self, device: "torch.device") -> None:
        import torch

        self.device = device
        scaled = (np.arange(256) / 255.0).astype(np.float32)
        mean = torch.tensor(PIXEL_MEAN, dtype=torch.float32)[:, None]
        std = torch.tensor(PIXEL_STD, dtype=torch.float32)[:, None]
        table = (torch.from_numpy(scaled)[None, :].expand(3, 256) - mean) / std
        # Row c of the flat table starts at 256 * c: one gather serves all three channels.
        self._table = table.reshape(-1).to(device)
        self._offsets = torch.arange(3, device=device).view(3, 1, 1) * 256
        self._frames: list[np.ndarray] = []

    def append(self, frame: np.ndarray) -> None:
        self._frames.append(frame)

    def __len__(self) -> int:
        return len(self._frames)

    def __getitem__(self, index: int) -> "torch.Tensor":
        return self.batch([index])[0]

    def batch(self, indices: Sequence[int]) -> "torch.Tensor":
        """Frames ``indices`` as one ``[B, 3, S, S]`` tensor: one copy to the device and one
        lookup for all of them."""
        import torch

        rgb = torch.from_numpy(np.stack([self._frames[i] for i in indices])).to(self.device)
        return self._table[rgb.permute(0, 3, 1, 2).long() + self._offsets]

    @property
    def host_bytes(self) -> int:
        return sum(f.nbytes for f in self._frames)


def new_inference_state(
    frames: FrameList, video_hw: tuple[int, int], device: "torch.device"
) -> dict[str, Any]:
    """``SAM2VideoPredictor.init_state``'s dict for ``frames`` (tested key for key against
    Meta's), without loading a folder and without its warm-up encoding of frame 0 (the
    tracker encodes frames as it needs them either way)."""
    return {
        "images": frames,
        "num_frames": len(frames),
        "offload_video_to_cpu": True,  # frames live on the host (FrameList)
        "offload_state_to_cpu": False,  # the memory bank lives on the device
        "video_height": video_hw[0],
        "video_width": video_hw[1],
        "device": device,
        "storage_device": device,
        "point_inputs_per_obj": {},
        "mask_inputs_per_obj": {},
        "cached_features": {},
        "constants": {},
        "obj_id_to_idx": OrderedDict(),
        "obj_idx_to_id": OrderedDict(),
        "obj_ids": [],
        "output_dict_per_obj": {},
        "temp_output_dict_per_obj": {},
        "frames_tracked_per_obj": {},
    }


@dataclass
class Video:
    """One video's state: Meta's ``inference_state`` over its :class:`FrameList`."""

    frames: FrameList
    size: tuple[int, int]
    state: dict[str, Any] = field(repr=False)

    @property
    def frame_count(self) -> int:
        return len(self.frames)

    @property
    def object_ids(self) -> list[int]:
        return list(self.state["obj_ids"])

    def device_bytes(self) -> int:
        """Bytes of the device tensors the state holds now (each storage counted once)."""
        import torch

        seen: dict[int, int] = {}

        def visit(value: Any) -> None:
            if isinstance(value, torch.Tensor):
                storage = value.untyped_storage()
                seen[storage.data_ptr()] = storage.nbytes()
            elif isinstance(value, dict):
                for v in value.values():
                    visit(v)
            elif isinstance(value, (list, tuple)):
                for v in value:
                    visit(v)

        for key, value in self.state.items():
            if key != "images":
                visit(value)
        return sum(seen.values())


def processing_order(start: int, count: int, reverse: bool, num_frames: int) -> range:
    """The frames ``propagate_in_video(state, start, count - 1, reverse)`` visits, in its
    order (Meta's own arithmetic: backwards from frame 0 it visits none)."""
    if reverse:
        end = max(start - (count - 1), 0)
        return range(start, end - 1, -1) if start > 0 else range(0)
    return range(start, min(start + count - 1, num_frames - 1) + 1)


class FeatureBatches:
    """Image features of a propagation's frames, encoded ``batch`` frames per run of the
    image encoder and handed to Meta's tracker through its own feature cache.

    Meta's ``_get_image_feature`` looks a frame up in ``inference_state["cached_features"]``
    (``{frame: (image [1, 3, S, S], backbone_out)}``) and encodes it alone on a miss. The
    tracker needs frame t's memory before frame t + 1, the image encoder nothing of the
    tracker's: so before the propagation reaches a frame of ``order`` that is not cached, the
    next ``batch`` frames it will track are encoded together (Meta's ``forward_image`` on a
    batch) and become the cache. The levels' position encodings depend on the shape alone:
    the frames share one copy. When the propagation ends, only the last tracked frame stays
    cached (copied out of its batch), as Meta's predictor leaves its cache.

    With ``pad`` a shorter batch (a propagation's first or last) is filled up with copies of
    its last frame, whose features are dropped: the encoder then only ever sees batches of 1
    (prompts) and ``batch``, the shapes a GPU instance warms up (:meth:`VideoSessionEngine.
    warm`) and ``torch_compile`` compiles, instead of building plans for a new size mid-video.
    """

    def __init__(
        self, predictor, video: Video, order: Sequence[int], batch: int, *, pad: bool = False
    ) -> None:
        self.predictor = predictor
        self.video = video
        self.order = list(order)
        self.batch = batch
        self.pad = pad
        outputs = list(video.state["output_dict_per_obj"].values())
        # A frame prompted for every object is not tracked: Meta takes its output as it is.
        self.tracked = [
            f for f in self.order if not all(f in o["cond_frame_outputs"] for o in outputs)
        ]
        self._position = {f: i for i, f in enumerate(self.tracked)}
        self._last: int | None = None

    def feed(self, tracking: Iterator) -> Iterator:
        """``tracking``'s items (``propagate_in_video`` over ``order``), each frame's features
        cached before the tracker asks for them."""
        upcoming = iter(self.order)
        try:
            while True:
                self._before(next(upcoming, None))
                try:
                    item = next(tracking)
                except StopIteration:
                    return
                yield item
        finally:
            self._keep_last()

    def _before(self, frame: int | None) -> None:
        if frame not in self._position:
            return
        self._last = frame
        if self.batch > 1 and frame not in self.video.state["cached_features"]:
            i = self._position[frame]
            self._encode(self.tracked[i : i + self.batch])

    def _encode(self, frames: Sequence[int]) -> None:
        import torch

        images = self.video.frames.batch(frames)  # [B, 3, S, S] float32
        if self.pad and len(frames) < self.batch:
            images = torch.cat([images, images[-1:].expand(self.batch - len(frames), -1, -1, -1)])
        out = self.predictor.forward_image(images)
        positions = [p[:1].clone() for p in out["vision_pos_enc"]]
        self.video.state["cached_features"] = {
            frame: (
                images[j : j + 1],
                _backbone_out([level[j : j + 1] for level in out["backbone_fpn"]], positions),
            )
            for j, frame in enumerate(frames)
        }

    def _keep_last(self) -> None:
        cache = self.video.state["cached_features"]
        if len(cache) <= 1:
            return
        kept = cache.get(self._last)
        if kept is None:
            self.video.state["cached_features"] = {}
            return
        image, out = kept
        levels = [level.clone() for level in out["backbone_fpn"]]
        features = _backbone_out(levels, out["vision_pos_enc"])
        self.video.state["cached_features"] = {self._last: (image.clone(), features)}


class ObjectBatches:
    """Meta's per-object tracking of a frame, run once for all the objects it can batch.

    Meta's SAM2.1 ``propagate_in_video`` tracks each object of a frame on its own: a call of
    ``_run_single_frame_inference`` with batch 1 and that object's ``output_dict``
    (``{"cond_frame_outputs": {frame: out}, "non_cond_frame_outputs": {frame: out}}``). Put
    in place of that method for a propagation (:meth:`installed`), this object answers the
    first such call of a frame for every later object of the frame whose outputs have the
    same frames in the same order (then the tracker reads the same memories and pointers of
    each): one run of Meta's own ``_run_single_frame_inference`` with batch N over
    :class:`_BatchedOutputs` of their dicts, split into each object's output, the later
    objects' kept until Meta's loop asks for them. The usual case, every object prompted on
    the same frames, is one batch; objects whose prompts differ are tracked as Meta tracks
    them. Meta's loop itself, and every call that is not a propagation's, is untouched.
    """

    def __init__(self, predictor) -> None:
        self.predictor = predictor
        self.run_one = predictor._run_single_frame_inference
        self._ready: dict[tuple[int, int], tuple] = {}
        self.runs: Counter[int] = Counter()  # batched runs by their number of objects

    @contextlib.contextmanager
    def installed(self) -> Iterator["ObjectBatches"]:
        self._ready.clear()
        self.predictor._run_single_frame_inference = self
        try:
            yield self
        finally:
            del self.predictor._run_single_frame_inference  # Meta's method again
            self._ready.clear()

    def __call__(
        self,
        inference_state,
        output_dict,
        frame_idx,
        batch_size,
        is_init_cond_frame,
        point_inputs,
        mask_inputs,
        reverse,
        run_mem_encoder,
        prev_sam_mask_logits=None,
    ):
        args = dict(
            inference_state=inference_state,
            frame_idx=frame_idx,
            is_init_cond_frame=is_init_cond_frame,
            point_inputs=point_inputs,
            mask_inputs=mask_inputs,
            reverse=reverse,
            run_mem_encoder=run_mem_encoder,
            prev_sam_mask_logits=prev_sam_mask_logits,
        )
        tracking = (
            batch_size == 1
            and not is_init_cond_frame
            and point_inputs is None
            and mask_inputs is None
            and run_mem_encoder
            and prev_sam_mask_logits is None
        )
        if not tracking:
            return self.run_one(output_dict=output_dict, batch_size=batch_size, **args)
        ready = self._ready.pop((frame_idx, id(output_dict)), None)
        if ready is not None:
            return ready
        self._ready.clear()
        group = self._group(inference_state, output_dict, frame_idx)
        if len(group) == 1:
            return self.run_one(output_dict=output_dict, batch_size=1, **args)
        batched = {
            key: _BatchedOutputs([d[key] for d in group])
            for key in ("cond_frame_outputs", "non_cond_frame_outputs")
        }
        out, masks = self.run_one(output_dict=batched, batch_size=len(group), **args)
        self.runs[len(group)] += 1
        for i, d in enumerate(group[1:], 1):
            self._ready[(frame_idx, id(d))] = (_object_output(out, i), masks[i : i + 1])
        return _object_output(out, 0), masks[0:1]

    @staticmethod
    def _group(inference_state, output_dict, frame_idx: int) -> list[dict]:
        """``output_dict`` and the dicts of the objects after it that Meta's loop will track
        on ``frame_idx`` (not prompted there) with the same frames in the same order."""

        def frames(d: dict) -> tuple[list, list]:
            return list(d["cond_frame_outputs"]), list(d["non_cond_frame_outputs"])

        dicts = [d for _, d in sorted(inference_state["output_dict_per_obj"].items())]
        mine = next((i for i, d in enumerate(dicts) if d is output_dict), None)
        if mine is None:
            return [output_dict]
        key = frames(output_dict)
        return [output_dict] + [
            d
            for d in dicts[mine + 1 :]
            if frame_idx not in d["cond_frame_outputs"] and frames(d) == key
        ]


class _BatchedOutputs(Mapping):
    """Several objects' ``{frame: out}`` with the same frames, read as one batch's: the
    entry of a frame concatenates the objects' tensors along the batch (on first read of a
    key: the tracker reads only the memories and pointers it attends to)."""

    def __init__(self, per_object: list[dict]) -> None:
        self._dicts = per_object

    def __getitem__(self, frame: int) -> "_BatchedEntry":
        return _BatchedEntry([d[frame] for d in self._dicts])

    def __iter__(self) -> Iterator[int]:
        return iter(self._dicts[0])

    def __len__(self) -> int:
        return len(self._dicts[0])


class _BatchedEntry(Mapping):
    def __init__(self, outs: list[dict]) -> None:
        self._outs = outs
        self._cache: dict = {}

    def __getitem__(self, key: str):
        import torch

        if key not in self._cache:
            values = [o[key] for o in self._outs]
            if values[0] is None:
                self._cache[key] = None
            elif isinstance(values[0], list):  # maskmem_pos_enc: a tensor per level
                self._cache[key] = [torch.cat(levels) for levels in zip(*values)]
            else:
                self._cache[key] = torch.cat(values)
        return self._cache[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._outs[0])

    def __len__(self) -> int:
        return len(self._outs[0])


def _object_output(out: dict, i: int) -> dict:
    """Object ``i``'s part of a batched frame output (Meta's compact output: tensors, and
    ``maskmem_pos_enc``, a list of views of one constant, as Meta's own). Copied, so that
    each object's memory is its own, as in Meta's predictor (freed when it is removed)."""
    part: dict = {}
    for key, value in out.items():
        if value is None:
            part[key] = None
        elif isinstance(value, list):
            part[key] = [v[i : i + 1] for v in value]
        else:
            part[key] = value[i : i + 1].clone()
    return part


def _backbone_out(levels: list, positions: list) -> dict:
    """One frame's ``backbone_out`` as Meta's ``forward_image`` gives it (its last level is
    also its ``vision_features``)."""
    return {"vision_features": levels[-1], "backbone_fpn": levels, "vision_pos_enc": positions}


# --- the engine -------------------------------------------------------------------------------


def build_video_predictor(
    size: ModelSize,
    weights: str | Path,
    device: "torch.device",
    *,
    image_size: int | None = None,
    torch_compile: str = "none",
    precision: str = "float32",
):
    """Meta's ``SAM2VideoPredictor`` of ``size`` (``build_sam2_video_predictor``: the same
    hydra config and post-processing overrides) with the weights of the Meta-format
    checkpoint ``weights``: its SHA-256 checked against the ``SHA256SUMS`` beside it (if that
    records it), read with ``weights_only=True`` and checked tensor by tensor.
    ``image_size`` overrides the model's input side (1024); ``torch_compile`` other than
    ``none`` builds Meta's ``SAM2VideoPredictorVOS`` (GPU only): ``max-autotune`` as Meta
    builds it, another mode through :func:`compile_video_predictor`.

    ``precision``: the :class:`VideoSessionEngine`'s that will run it. For ``"bfloat16"``
    (autocast) the weights autocast casts at every call (linear and convolution layers) are
    stored in bfloat16, cast on the host before the move
    (:func:`~sam2_triton.sessions.torch_networks.cast_autocast_weights`): the same answers
    bit for bit, half their memory, and no casts at every frame. Only for a predictor run
    under bfloat16 autocast (the engine does; Meta's API alone does not)."""
    import torch
    from sam2.build_sam import build_sam2_video_predictor

    from sam2_triton.checksums import file_sha256, recorded_sha256, sums_path
    from sam2_triton.export import check_state_dict, read_checkpoint
    from sam2_triton.sessions.torch_networks import cast_autocast_weights

    recorded = recorded_sha256(weights)
    if recorded is not None and file_sha256(weights) != recorded:
        raise UserError(
            f"{weights} changed since it was written: its SHA-256 is not the one "
            f"{sums_path(weights)} records (export it again)"
        )
    state_dict = read_checkpoint(weights)
    overrides = [] if image_size in (None, 0, IMAGE_SIZE) else [f"++model.image_size={image_size}"]
    if torch_compile not in TORCH_COMPILE_MODES:
        raise UserError(f"torch_compile must be one of {', '.join(TORCH_COMPILE_MODES)}")
    if precision not in PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    model = build_sam2_video_predictor(
        size.config,
        ckpt_path=None,
        device="cpu",
        mode="eval",
        hydra_overrides_extra=overrides,
        vos_optimized=torch_compile == META_COMPILE_MODE,  # Meta's builder compiles it
    )
    check_state_dict(model.state_dict(), state_dict, size, weights)
    model.load_state_dict(state_dict)
    torch.set_grad_enabled(False)
    if precision == "bfloat16":
        cast_autocast_weights(model, torch.bfloat16)
    model = model.to(device).eval()
    compile_video_predictor(model, torch_compile)
    return model


META_COMPILE_MODE = "max-autotune"
# Meta's SAM2VideoPredictorVOS: the networks torch.compile'd, and whether each is compiled for
# varying shapes (the memory attention's memories grow over a video's first frames).
_COMPILED = (
    ("image_encoder", False),
    ("memory_encoder", False),
    ("memory_attention", True),
    ("sam_prompt_encoder", False),
    ("sam_mask_decoder", False),
)


def compile_video_predictor(predictor, mode: str) -> None:
    """Make ``predictor`` (a plain ``SAM2VideoPredictor``) Meta's ``SAM2VideoPredictorVOS``
    with its networks compiled in torch.compile ``mode`` instead of Meta's
    ``max-autotune``, whose autotuning takes many minutes of a server's load (each matrix
    product's shape benchmarked against ~20 kernels). ``reduce-overhead`` keeps what the
    tracker needs most, CUDA graphs: a frame is hundreds of small kernels launched from
    Python. The class is switched rather than rebuilt: Meta's VOS subclass only overrides
    methods (copies of compiled outputs, which CUDA graphs overwrite on their next replay).
    ``none``, and Meta's own mode (which ``build_sam2_video_predictor(vos_optimized=True)``
    compiles), leave ``predictor`` as it is."""
    import torch
    from sam2.sam2_video_predictor import SAM2VideoPredictorVOS

    if mode in ("none", META_COMPILE_MODE):
        return
    predictor.__class__ = SAM2VideoPredictorVOS
    for name, dynamic in _COMPILED:
        module = getattr(predictor, name)
        compiled = torch.compile(module.forward, mode=mode, fullgraph=True, dynamic=dynamic)
        module.forward = functools.partial(_run_graphed, compiled)


def uncompile_video_predictor(predictor) -> None:
    """Undo :func:`compile_video_predictor` (or Meta's VOS compilation): Meta's eager
    ``SAM2VideoPredictor`` again, each network with its class's own forward."""
    from sam2.sam2_video_predictor import SAM2VideoPredictor

    for name, _ in _COMPILED:
        module = getattr(predictor, name)
        if "forward" in vars(module):
            del module.forward
    predictor.__class__ = SAM2VideoPredictor


#: The networks a prompt runs with shapes of its own (points, boxes, masks): eager at prompts.
_PROMPT_NETWORKS = ("sam_prompt_encoder", "sam_mask_decoder")


@contextlib.contextmanager
def eager_prompt_networks(predictor) -> Iterator[None]:
    """Run the prompt encoder and mask decoder of a compiled predictor in eager mode inside
    the block. Compiled for fixed shapes (as Meta's VOS compiles them: shape-polymorphic
    compilation cost it accuracy), they would compile again for every new number of points
    a click brings, for seconds, in the middle of a user's request; a propagation's calls
    (no points) keep one shape and stay compiled. A plain predictor is left as it is."""
    swapped = {}
    for name in _PROMPT_NETWORKS:
        module = getattr(predictor, name)
        if "forward" in vars(module):  # compile_video_predictor's (or Meta's) compiled forward
            swapped[module] = vars(module)["forward"]
            del module.forward  # the class's own, eager forward
    try:
        yield
    finally:
        for module, forward in swapped.items():
            module.forward = forward


def _compiled(predictor) -> bool:
    """Whether ``predictor`` is Meta's compiled ``SAM2VideoPredictorVOS``."""
    from sam2.sam2_video_predictor import SAM2VideoPredictorVOS

    return isinstance(predictor, SAM2VideoPredictorVOS)


def _tracker_thread(device: "torch.device", compiled: bool) -> None:
    """What the tracker's thread needs before its first task: the instance's device as its
    current one (:func:`~sam2_triton.sessions.runtime.make_current`), and for a compiled
    predictor torch.compile's CUDA graph state."""
    make_current(device)
    if compiled:
        _cudagraph_trees_of_this_thread()


def _cudagraph_trees_of_this_thread() -> None:
    """Give the calling thread torch.compile's per-thread CUDA graph state (cudagraph trees).
    torch 2.11 (the H100's) makes it only in the thread that imported
    ``torch._inductor.cudagraph_trees`` and in autograd's threads, and asserts in any other
    (``get_obj``: ``assert torch._C._is_key_in_tls``); later versions make it on first use."""
    from torch._inductor import cudagraph_trees

    local = cudagraph_trees.local
    if hasattr(local, "tree_manager_containers"):
        return
    initialize = getattr(cudagraph_trees, "_initialize_tls", None)
    if initialize is not None:
        initialize(local)
        return
    local.tree_manager_containers = {}
    local.tree_manager_locks = defaultdict(threading.Lock)


def _run_graphed(compiled, *args, **kwargs):
    """``compiled``'s outputs, copied out of its CUDA graph's memory. The tracker keeps
    outputs across frames (memories, pointers) and calls one network between another's
    output and its use, so that a replay would overwrite them: every call starts a new step
    (``cudagraph_mark_step_begin``), safe once no output lives in a graph's memory."""
    import torch
    from torch.utils._pytree import tree_map

    torch.compiler.cudagraph_mark_step_begin()
    out = compiled(*args, **kwargs)
    return tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, out)


def _memory_in_float32(module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Meta's predictor keeps memory features in bfloat16 and concatenates them with the
    float32 object pointers, which promotes the memory to float32. An object tracked on a
    frame before its first prompt has no pointer yet: its memory stays bfloat16, and without
    autocast (float32 on a CPU or GPU) Meta's memory attention fails on the dtype mismatch.
    Cast it as the concatenation would have."""
    import torch

    memory, curr = kwargs.get("memory"), kwargs.get("curr")
    if isinstance(memory, torch.Tensor) and curr is not None:
        dtype = (curr[0] if isinstance(curr, list) else curr).dtype
        if memory.dtype != dtype:
            kwargs = {**kwargs, "memory": memory.to(dtype)}
    return args, kwargs


def hole_filling_available() -> bool:
    """Whether Meta's CUDA extension (``sam2._C``) is there: without it the predictor skips
    filling small holes in masks (``fill_hole_area``), with a warning."""
    try:
        from sam2 import _C  # noqa: F401
    except ImportError:
        return False
    return True


class VideoSessionEngine:
    """Videos of one model instance: frames arrive, prompts and propagation track objects.

    ``predictor`` is Meta's ``SAM2VideoPredictor`` on ``device``
    (:func:`build_video_predictor`); ``precision`` ``"bfloat16"`` runs it under CUDA
    autocast (with TF32 matmuls, as Meta's benchmark), ``"float32"`` as built.

    On a CUDA device, :attr:`idle_release` gives a propagation's cached memory back once the
    engine has been idle for ``limits.memory_release_idle_s`` (its thread is started by the
    caller: ``engine.idle_release.start()``; :meth:`close` stops it); ``on_memory_release(
    before, after)`` gets torch's reserved bytes around each release.
    """

    def __init__(
        self,
        predictor,
        device: "torch.device",
        limits: VideoLimits = VideoLimits(),
        *,
        precision: str = "float32",
        on_drop: Callable[[Hashable, Video, str], None] | None = None,
        pad_feature_batches: bool | None = None,
        on_memory_release: Callable[[int, int], None] | None = None,
    ) -> None:
        import torch

        if precision not in PRECISIONS:
            raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
        if precision == "bfloat16" and device.type != "cuda":
            raise UserError("bfloat16 needs a GPU instance (use float32 on the CPU)")
        linear = next(m for m in predictor.modules() if isinstance(m, torch.nn.Linear))
        if precision == "float32" and linear.weight.dtype != torch.float32:
            raise UserError(
                "this predictor's weights were cast for bfloat16 (build_video_predictor's "
                "precision): it cannot run float32"
            )
        self.predictor = predictor
        self.device = device
        self.limits = limits
        self.precision = precision
        # Fixed shapes matter on a GPU (plans, compiled graphs); on a CPU padding only costs.
        self.pad_feature_batches = (
            device.type == "cuda" if pad_feature_batches is None else pad_feature_batches
        )
        self.image_size = int(predictor.image_size)
        self.store: SessionStore[Video] = SessionStore(
            limits.max_videos, limits.idle_timeout_s, on_drop=on_drop
        )
        self._decoder = ThreadPoolExecutor(max(1, limits.decode_threads), "frame-decode")
        # The tracker runs on one thread of its own, whichever thread calls: torch.compile's
        # CUDA graphs (cudagraph trees) and autocast are per thread, and a warm-up on
        # Triton's loading thread would not serve requests executed on another.
        self._tracker = ThreadPoolExecutor(
            1,
            "video-tracker",
            initializer=_tracker_thread,
            initargs=(device, _compiled(predictor)),
        )
        self.object_batches = self._object_batches()
        #: Why the compiled networks were given up at the warm-up (then the tracker runs
        #: eager), or None.
        self.compile_error: str | None = None
        self.idle_release = IdleRelease.for_device(
            device, limits.memory_release_idle_s, on_memory_release
        )
        if precision == "bfloat16":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        else:
            predictor.memory_attention.register_forward_pre_hook(
                _memory_in_float32, with_kwargs=True
            )

    def _object_batches(self) -> ObjectBatches | None:
        """What batches a propagation's objects: none where the limits say so, nor for a
        compiled predictor, whose networks are made for each batch size (it would compile
        again for each new count of objects mid-video)."""
        if self.limits.batch_objects and not self.compiled:
            return ObjectBatches(self.predictor)
        return None

    @property
    def compiled(self) -> bool:
        """Whether the tracker's networks run compiled (``torch_compile``, not given up)."""
        return _compiled(self.predictor)

    def state_bytes(self) -> tuple[int, int]:
        """``(device, host)`` bytes one video may hold at this instance's limits."""
        limits = self.limits
        return video_state_bytes(
            self.image_size,
            limits.max_frames,
            limits.max_objects,
            max_points=limits.max_points,
            mask_prompts=limits.max_mask_prompts,
        )

    def feature_batch_bytes(self) -> int:
        """Device bytes a propagation holds beyond its video's bound while it runs: the
        features of ``feature_batch`` frames instead of one (an instance runs one request at
        a time, so this is per instance, not per video)."""
        batch = video_state_bytes(self.image_size, 0, 0, feature_batch=self.limits.feature_batch)
        return batch[0] - video_state_bytes(self.image_size, 0, 0)[0]

    def warm(self) -> float:
        """Track a blank video once, outside the store (a click on frame 0, then the others
        propagated, their features encoded in batches of ``feature_batch``), so that an
        instance's kernels, libraries and plans are loaded before its first request rather
        than during it; seconds taken. Nothing is kept.

        The video is long enough for every shape the tracker meets: the memory attention
        reads one more memory (up to ``num_maskmem``) and one more object pointer (up to
        ``max_obj_ptrs_in_encoder``) each frame, and each new length costs a first run
        (attention plans; with ``torch_compile`` CUDA graphs): on the H100, a 32-frame video
        took 0.3 s longer (1.05 s instead of 0.72) when only two frames had been warmed.
        A compiled predictor tracks it twice: torch.compile runs a new shape once before it
        records its CUDA graph."""
        return self._tracker.submit(self._warm).result()

    def _warm(self) -> float:
        t0 = time.perf_counter()
        if _compiled(self.predictor):
            try:
                for _ in range(2):
                    self._track_blank_video()
            except Exception as e:  # noqa: BLE001 - any compiler failure: serve eager instead
                self._give_up_compiling(e)
        if not _compiled(self.predictor):
            self._track_blank_video()
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)
            # What the blank video's tracking left in torch's cache goes back to the device
            # (the compiled graphs keep their own pools); the idle release measures from here.
            torch.cuda.empty_cache()
            if self.idle_release is not None:
                self.idle_release.settle()
        return time.perf_counter() - t0

    def _give_up_compiling(self, error: Exception) -> None:
        """The tracker's compilation failed (torch.compile needs a C compiler and Triton's
        kernels for the GPU at hand): run Meta's eager predictor instead, objects batched as
        the limits say, and say why in ``compile_error``."""
        import gc

        import torch

        # torch.compile wraps the compiler's own error (BackendCompilerFailed: "backend=
        # 'inductor' raised:"): the inner one says what is missing.
        cause = getattr(error, "inner_exception", None) or error
        first_line = (str(cause).strip().splitlines() or [""])[0][:300]
        self.compile_error = f"{type(cause).__name__}: {first_line}"
        log.warning(
            "torch.compile failed, the tracker runs eager: %s", self.compile_error, exc_info=error
        )
        uncompile_video_predictor(self.predictor)
        # Free what the compilation holds (its code and, on this thread, the CUDA graphs'
        # memory pool): not part of the instance's bound.
        torch._dynamo.reset()
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.object_batches = self._object_batches()

    def _track_blank_video(self) -> None:
        s = self.image_size
        p = self.predictor
        count = 2 + max(
            p.num_maskmem, p.max_obj_ptrs_in_encoder if p.use_obj_ptrs_in_encoder else 0
        )
        frames = FrameList(self.device)
        for _ in range(count):
            frames.append(np.full((s, s, 3), 128, np.uint8))
        video = Video(frames, (s, s), new_inference_state(frames, (s, s), self.device))
        click = make_prompt((s, s), np.array([[s / 2, s / 2]], np.float32), np.array([1]), None)
        with self._running():
            self._prompt(video, VideoRequest(None, frame_index=0, object_id=1), click)
            start = None  # in responses of max_frames_per_response frames, as a client asks
            while start is None or start < count:
                answer = self._propagate(
                    video, VideoRequest(None, propagate=True, start_frame=start)
                )
                start = int(answer.frame_indices[-1]) + 1

    @contextlib.contextmanager
    def _running(self) -> Iterator[None]:
        import torch

        with torch.inference_mode():
            if self.precision == "bfloat16":
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    yield
            else:
                yield

    # --- the batch -------------------------------------------------------------------------

    def execute(self, requests: Sequence[VideoRequest]) -> list[VideoAnswer | Exception]:
        """Answer each request in turn (Triton's sequence batcher sends at most one per
        video). A :class:`RequestError` answers a request the engine refused, before
        anything of its video changed; another exception is a failure of the tracker itself
        (it answers only its request too)."""
        return self._tracker.submit(self._execute_busy, requests).result()

    def _execute_busy(self, requests: Sequence[VideoRequest]) -> list[VideoAnswer | Exception]:
        with self.idle_release.busy() if self.idle_release else contextlib.nullcontext():
            return self._execute(requests)

    def _execute(self, requests: Sequence[VideoRequest]) -> list[VideoAnswer | Exception]:
        in_use = {r.session_id for r in requests}
        for key in in_use:  # a request is a use: no sweep may expire these now
            self.store.get(key)
        answers: list[VideoAnswer | Exception] = []
        for request in requests:
            try:
                with self._running():
                    answers.append(self._execute_one(request, in_use))
            except (RequestError, UserError) as e:
                answers.append(RequestError(str(e)))
            except Exception as e:  # noqa: BLE001 - the tracker failed: report, keep serving
                log.exception("video %s: the tracker failed", request.session_id)
                answers.append(e)
            finally:
                if request.end:
                    self.store.pop(request.session_id)
        return answers

    def _execute_one(self, request: VideoRequest, in_use: set) -> VideoAnswer:
        if request.start:
            self.store.pop(request.session_id)  # a new sequence: anything older is stale
            if not request.frames:
                raise RequestError(
                    "the first request of a video must carry its first frame(s) (frames)"
                )
            video = None
        else:
            video = self.store.get(request.session_id)
            if video is None:
                if request.end and not (request.frames or request.has_prompt or request.propagate):
                    return self._empty_answer(None)  # closing is idempotent
                why = self.store.why_missing(request.session_id)
                raise RequestError(missing_video_message(request.session_id, why))
        decoded = self._decode_frames(request, video)
        prompt = self._check(request, video, decoded)
        if video is None:
            frames = FrameList(self.device)
            size = decoded[0][1]
            video = Video(frames, size, new_inference_state(frames, size, self.device))
            try:
                self.store.put(request.session_id, video, in_use)
            except StoreFull as e:
                raise RequestError(str(e)) from None
        for rgb, _ in decoded:
            video.frames.append(rgb)
        video.state["num_frames"] = video.frame_count  # the video as it is now
        if request.remove_object:
            self.predictor.remove_object(
                video.state, request.object_id, strict=True, need_output=False
            )
        if request.has_prompt:
            return self._prompt(video, request, prompt)
        if request.propagate:
            return self._propagate(video, request)
        return self._empty_answer(video)

    def _decode_frames(
        self, request: VideoRequest, video: Video | None
    ) -> list[tuple[np.ndarray, tuple[int, int]]]:
        """Decode every frame of the request (in parallel) and check them; nothing is kept
        unless all of them are good."""
        limits = self.limits
        count = len(request.frames)
        if count > limits.max_frames_per_request:
            raise RequestError(
                f"{count} frames in one request; at most {limits.max_frames_per_request} are "
                "accepted (send the rest in further requests)"
            )
        have = 0 if video is None else video.frame_count
        if have + count > limits.max_frames:
            raise RequestError(
                f"a video may have at most {limits.max_frames} frames; this one has {have} and "
                f"the request adds {count}"
            )
        for i, data in enumerate(request.frames):
            if len(data) > limits.max_frame_bytes:
                raise RequestError(
                    f"frame {have + i} has {len(data)} bytes; at most {limits.max_frame_bytes} "
                    "are accepted"
                )
        decoded = list(
            self._decoder.map(
                lambda item: decode_frame(
                    item[1], self.image_size, limits.max_frame_pixels, f"frame {have + item[0]}"
                ),
                enumerate(request.frames),
            )
        )
        size = video.size if video is not None else (decoded[0][1] if decoded else None)
        for i, (_, hw) in enumerate(decoded):
            if hw != size:
                raise RequestError(
                    f"frame {have + i} is {hw[1]}x{hw[0]} but this video's frames are "
                    f"{size[1]}x{size[0]}: every frame of a video must have the same size"
                )
        return decoded

    def _check(
        self, request: VideoRequest, video: Video | None, decoded: Sequence[tuple]
    ) -> Prompt | None:
        """Refuse a request Meta's predictor would fail on (or should not be given), before
        anything of the video changes; the request's points/box prompt, checked."""
        count = (0 if video is None else video.frame_count) + len(decoded)
        objects = [] if video is None else video.object_ids
        if request.has_prompt and request.propagate:
            raise RequestError("give a prompt or propagate in one request, not both")
        if (request.has_prompt or request.remove_object) and request.object_id is None:
            what = "a prompt" if request.has_prompt else "remove_object"
            raise RequestError(f"{what} needs the object_id it is for")
        if request.remove_object and request.object_id not in objects:
            raise RequestError(
                f"object {request.object_id} is not in this video (its objects: {objects})"
            )
        if request.has_prompt:
            if request.frame_index is None:
                raise RequestError("a prompt needs the frame_index it is on")
            self._check_frame(request.frame_index, count, "frame_index")
            if request.object_id not in objects and len(objects) >= self.limits.max_objects:
                raise RequestError(
                    f"a video may track at most {self.limits.max_objects} objects (it has "
                    f"{objects}); remove one first"
                )
            if request.mask is not None:
                if request.points is not None or request.box is not None:
                    raise RequestError("give points/box or a mask in one prompt, not both")
                if request.mask.ndim != 2 or 0 in request.mask.shape:
                    raise RequestError(
                        f"mask must be one [height, width] mask, got shape {request.mask.shape}"
                    )
                if request.mask.size > self.limits.max_frame_pixels:
                    raise RequestError(
                        f"mask has {request.mask.size} pixels; at most "
                        f"{self.limits.max_frame_pixels} are accepted"
                    )
                if video is not None and self._new_mask_prompts(video, request) > 0:
                    kept = sum(len(m) for m in video.state["mask_inputs_per_obj"].values())
                    if kept >= self.limits.max_mask_prompts:
                        raise RequestError(
                            f"this video keeps {kept} mask prompts, the most it may: prompt "
                            "with points or a box instead"
                        )
            else:
                if request.box is not None and not request.clear_old_points:
                    raise RequestError(
                        "a box must come with clear_old_points (a box is placed before any "
                        "points, as in Meta's predictor)"
                    )
                size = video.size if video is not None else decoded[0][1]
                prompt = make_prompt(
                    size,
                    request.points,
                    request.labels,
                    request.box,
                    max_points=self.limits.max_points,
                )
                kept = 0 if request.clear_old_points else self._points_kept(video, request)
                if kept + prompt.num_points > self.limits.max_points:
                    raise RequestError(
                        f"frame {request.frame_index} of object {request.object_id} would have "
                        f"{kept + prompt.num_points} points; at most {self.limits.max_points} "
                        "(use clear_old_points)"
                    )
                return prompt
        if request.propagate:
            if not objects:
                raise RequestError("add a prompt before propagating: this video has no objects")
            if request.start_frame is not None:
                self._check_frame(request.start_frame, count, "start_frame")
            if request.max_frames is not None and request.max_frames < 1:
                raise RequestError(f"max_frames must be ≥ 1, got {request.max_frames}")
        return None

    @staticmethod
    def _points_kept(video: Video | None, request: VideoRequest) -> int:
        """Points the prompted object already has on the prompted frame."""
        if video is None or request.object_id not in video.state["obj_id_to_idx"]:
            return 0
        idx = video.state["obj_id_to_idx"][request.object_id]
        kept = video.state["point_inputs_per_obj"][idx].get(request.frame_index)
        return 0 if kept is None else int(kept["point_coords"].shape[1])

    @staticmethod
    def _new_mask_prompts(video: Video, request: VideoRequest) -> int:
        """1 if the prompt's mask adds to the masks kept (not replacing one), else 0."""
        idx = video.state["obj_id_to_idx"].get(request.object_id)
        if idx is None:
            return 1
        return int(request.frame_index not in video.state["mask_inputs_per_obj"][idx])

    @staticmethod
    def _check_frame(index: int, count: int, name: str) -> None:
        if not 0 <= index < count:
            raise RequestError(
                f"{name} {index} has not been sent yet: this video has {count} frames "
                f"(0 to {count - 1})"
            )

    # --- prompts ----------------------------------------------------------------------------

    def _prompt(self, video: Video, request: VideoRequest, prompt: Prompt | None) -> VideoAnswer:
        predictor, state, f = self.predictor, video.state, request.frame_index
        with eager_prompt_networks(predictor):
            if prompt is None:
                _, object_ids, logits = predictor.add_new_mask(
                    state, f, request.object_id, request.mask.astype(bool)
                )
            else:
                _, object_ids, logits = predictor.add_new_points_or_box(
                    state,
                    f,
                    request.object_id,
                    points=prompt.points,
                    labels=prompt.labels,
                    clear_old_points=request.clear_old_points,
                    box=prompt.box,
                )
        obj_idx = state["obj_id_to_idx"][request.object_id]
        is_cond = f in state["temp_output_dict_per_obj"][obj_idx]["cond_frame_outputs"]
        scores = [self._score(state, i, f, is_cond) for i in range(len(object_ids))]
        return self._answer(video, request, [f], [logits], [scores])

    @staticmethod
    def _score(
        state: dict, obj_idx: int, frame: int, is_cond: bool | None
    ) -> "torch.Tensor | None":
        """Object ``obj_idx``'s score on ``frame`` (a 0-d tensor on the device; read to the
        host once per request, not once per frame): its output where Meta's consolidation (for
        a prompt, ``is_cond`` given) or its propagation (``None``) takes it from; ``None`` where
        it has none."""
        outputs = state["output_dict_per_obj"][obj_idx]
        places = [outputs["cond_frame_outputs"], outputs["non_cond_frame_outputs"]]
        if is_cond is not None:
            temp = state["temp_output_dict_per_obj"][obj_idx]
            places.insert(0, temp["cond_frame_outputs" if is_cond else "non_cond_frame_outputs"])
        for place in places:
            out = place.get(frame)
            if out is not None:
                return out["object_score_logits"].reshape(-1)[0].float()
        return None

    # --- propagation ------------------------------------------------------------------------

    def _propagate(self, video: Video, request: VideoRequest) -> VideoAnswer:
        predictor, state = self.predictor, video.state
        try:
            predictor.propagate_in_video_preflight(state)
        except RuntimeError as e:
            if str(e).startswith("No input points or masks"):
                raise RequestError(str(e)) from None
            raise
        start = request.start_frame
        if start is None:  # Meta's default: the earliest frame with a prompt
            outputs = state["output_dict_per_obj"].values()
            start = min(t for out in outputs for t in out["cond_frame_outputs"])
        objects = max(1, len(state["obj_ids"]))
        h, w = video.size
        fit = max(1, self.limits.max_response_bytes // (objects * h * w))
        wanted = min(
            request.max_frames or self.limits.max_frames_per_response,
            self.limits.max_frames_per_response,
            fit,
        )
        available = start + 1 if request.reverse else video.frame_count - start
        count = min(wanted, available)
        order = processing_order(start, count, request.reverse, video.frame_count)
        features = FeatureBatches(
            predictor, video, order, self.limits.feature_batch, pad=self.pad_feature_batches
        )
        objects_batched = (
            self.object_batches.installed() if self.object_batches else contextlib.nullcontext()
        )
        indices, logits, scores = [], [], []
        with objects_batched:
            tracking = predictor.propagate_in_video(
                state,
                start_frame_idx=start,
                max_frame_num_to_track=count - 1,
                reverse=request.reverse,
            )
            for frame, object_ids, frame_logits in features.feed(tracking):
                indices.append(frame)
                logits.append(frame_logits)
                scores.append([self._score(state, i, frame, None) for i in range(len(object_ids))])
        return self._answer(video, request, indices, logits, scores)

    # --- answers ----------------------------------------------------------------------------

    def _answer(
        self,
        video: Video,
        request: VideoRequest,
        indices: list[int],
        logits: list["torch.Tensor"],
        scores: list[list["torch.Tensor | None"]],
    ) -> VideoAnswer:
        import torch

        found = [v for row in scores for v in row if v is not None]
        values = iter(torch.stack(found).cpu().tolist() if found else [])
        flat = [NO_OBJECT_SCORE if v is None else next(values) for row in scores for v in row]

        h, w = video.size
        objects = len(video.object_ids)
        if "masks" in request.outputs and logits:
            # As Meta's notebooks: a pixel is in the mask where its logit is > 0.
            masks = torch.stack([(m[:, 0] > 0) for m in logits]).to(torch.uint8).cpu().numpy()
        else:
            masks = np.zeros((len(indices) if logits else 0, objects, h, w), np.uint8)
        return VideoAnswer(
            frame_count=video.frame_count,
            video_size=video.size,
            object_ids=np.asarray(video.object_ids, np.int32),
            frame_indices=np.asarray(indices, np.int32),
            masks=masks,
            object_scores=np.asarray(flat, np.float32).reshape(len(indices), objects),
        )

    def _empty_answer(self, video: Video | None) -> VideoAnswer:
        h, w = video.size if video is not None else (0, 0)
        ids = [] if video is None else video.object_ids
        return VideoAnswer(
            frame_count=0 if video is None else video.frame_count,
            video_size=(h, w),
            object_ids=np.asarray(ids, np.int32),
            frame_indices=np.zeros((0,), np.int32),
            masks=np.zeros((0, len(ids), h, w), np.uint8),
            object_scores=np.zeros((0, len(ids)), np.float32),
        )

    def close(self) -> None:
        """Drop every video (the instance is unloading)."""
        if self.idle_release is not None:
            self.idle_release.stop()
        self.store.clear()
        self._decoder.shutdown(wait=False)
        self._tracker.shutdown(wait=False)


def bound_summary(engine: VideoSessionEngine) -> str:
    """One line stating what a video may hold on this instance (logged at load)."""
    device, host = engine.state_bytes()
    limits = engine.limits
    return (
        f"at most {limits.max_videos} videos of ≤ {limits.max_frames} frames and "
        f"≤ {limits.max_objects} objects; per video ≤ {device / 2**30:.2f} GiB on the device "
        f"({tracked_bytes(engine.image_size) / 2**10:.0f} KiB per object and tracked frame) "
        f"and ≤ {host / 2**30:.2f} GiB on the host "
        f"({3 * engine.image_size**2 / 2**20:.2f} MiB per frame); a propagation's "
        f"{limits.feature_batch} frames of features ≤ "
        f"{engine.feature_batch_bytes() / 2**20:.0f} MiB more while it runs"
    )
